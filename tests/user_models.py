"""A user's own model, named in config as `user_models:TinyEncoder` (this folder is on
sys.path under pytest, as a user's package would be once installed)."""

from torch import nn
from torch.nn import functional as F


class TinyEncoder(nn.Module):
    """Predicts each band's mean brightness from the pixels; its hidden layer is the embedding."""

    def __init__(self, input_shape, hidden: int = 8):
        super().__init__()
        bands = input_shape[0]
        self.features = nn.Sequential(nn.Conv2d(bands, 4, 5, stride=4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, hidden))
        self.head = nn.Linear(hidden, bands)

    def training_step(self, batch):
        x = batch["image"]
        return F.mse_loss(self.head(self.features(x)), x.mean(dim=(2, 3)))

    def embed(self, batch):
        return self.features(batch["image"])


class Tiny(nn.Module):
    """The README's "Bring your own model" example, verbatim in behaviour."""

    modalities = ("image",)
    needs_labels = False

    def __init__(self, input_shape, hidden: int = 16):
        super().__init__()
        c, h, w = input_shape
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden))
        self.dec = nn.Linear(hidden, c * h * w)

    def training_step(self, batch):
        x = batch["image"]
        recon = self.dec(self.enc(x)).view_as(x)
        return {"loss": F.mse_loss(recon, x), "mean_latent": self.enc(x).mean()}

    def embed(self, batch):
        return self.enc(batch["image"])
