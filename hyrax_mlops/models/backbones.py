"""Image encoders shared by the self-supervised and supervised models, looked up by name.

A backbone maps (n, bands, h, w) to (n, `out_dim`) features for any number of bands and any
stamp size (global average pooling at the end), so one model definition serves 1-band
difference images and 5-band coadds alike.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hyrax_mlops.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


class _Conv(nn.Module):
    """Four conv-BN-GELU stages, each halving the size after the first."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(chans):
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.GELU()]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c

    def forward(self, x):
        return self.body(x)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                   nn.BatchNorm2d(c_out)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.skip(x))


class _ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks) with a 3×3 stride-1 stem and no max-pool, as
    suits 32–128 pixel stamps; `width` scales the channels (64 = the original)."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c = chans[0]
        for i, w in enumerate(chans):
            blocks += [_Block(c, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c

    def forward(self, x):
        return self.pool(self.blocks(self.stem(x)))


BACKBONES.register("conv")(_Conv)
BACKBONES.register("resnet18")(_ResNet18)


def build_backbone(name: str, in_channels: int, width: int) -> nn.Module:
    try:
        cls = BACKBONES.get(name)
    except KeyError as exc:
        raise ValueError(f"model.backbone: {exc}") from None
    return cls(in_channels, width)
