"""A model's batch from raw inputs — pixels, catalog columns, spectra, light curves — prepared
as the dataset's were when it was trained (its normaliser, feature scaling and series layout):
what search by example and serving both need, for every modality a model reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

SERIES = ("spectrum", "lightcurve")


def model_kinds(model: torch.nn.Module) -> tuple[str, ...]:
    """What a model reads: the kinds this one was built on (the fusion model's `kinds`), else
    its class's `modalities` (default: images)."""
    return tuple(getattr(model, "kinds", None) or getattr(model, "modalities", ("image",)))


def _series_table(items: Sequence[pd.DataFrame | None] | None, ids: np.ndarray) -> pd.DataFrame:
    """One long table of per-object series, keyed by the batch's row ids."""
    parts = [t.assign(object_id=oid) for t, oid in zip(items or [], ids, strict=False)
             if t is not None and len(t)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"object_id": pd.Series(dtype=str)})


def raw_batch(model: torch.nn.Module, normalizer, n: int, *, images: np.ndarray | None = None,
              features: pd.DataFrame | None = None,
              spectra: Sequence[pd.DataFrame | None] | None = None,
              lightcurves: Sequence[pd.DataFrame | None] | None = None) -> dict[str, torch.Tensor]:
    """The batch of `n` objects a model takes, from raw inputs: `images` float32 (n, bands,
    h, w); `features` the catalog columns its features are made of (missing ones count as
    missing values); `spectra` (wave, flux, err, good) and `lightcurves` (time, band, mag,
    mag_err) tables, one per object or None, as `data.series` reads them. A modality the
    model reads but an object lacks is masked out, as in training; images are required by a
    model that reads them."""
    from hyrax_mlops.data import series as S

    kinds = model_kinds(model)
    batch: dict[str, torch.Tensor] = {"row": torch.arange(n)}
    if "image" in kinds:
        if images is None:
            raise ValueError("this model reads images: the request has none")
        x = normalizer.apply(np.array(images, dtype=np.float32), inplace=True)
        batch["image"] = torch.from_numpy(x)
    if "tabular" in kinds:
        scaler = normalizer.features
        wanted = sorted({name.rpartition(":")[2] for name in scaler.names})
        table = (features if features is not None else pd.DataFrame(index=range(n)))
        values, mask = scaler.transform(table.reindex(columns=wanted))
        batch["tabular"], batch["tabular_mask"] = torch.from_numpy(values), torch.from_numpy(mask)
    layout = normalizer.series or {}
    ids = np.array([f"q{i}" for i in range(n)])
    if "spectrum" in kinds:
        lo, hi, pixels = layout["spectrum_grid"]
        grid = np.geomspace(float(lo), float(hi), int(pixels))
        flux, mask = S.spectrum_tensors(_series_table(spectra, ids), ids, grid)
        batch["spectrum"], batch["spectrum_mask"] = torch.from_numpy(flux), torch.from_numpy(mask)
    if "lightcurve" in kinds:
        points, mask = S.lightcurve_tensors(_series_table(lightcurves, ids), ids,
                                            layout["lightcurve_bands"],
                                            int(layout["lightcurve_points"]))
        batch["lightcurve"], batch["lightcurve_mask"] = (torch.from_numpy(points),
                                                         torch.from_numpy(mask))
    return batch


def embed_raw(model: torch.nn.Module, normalizer, n: int, **inputs
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and class probabilities) of `n` objects given raw (see `raw_batch`)."""
    from hyrax_mlops.engine.inference import model_outputs

    batch = raw_batch(model, normalizer, n, **inputs)
    with torch.no_grad():
        z, probs = model_outputs(model.eval(), batch)
    return z.float().numpy(), None if probs is None else probs.float().numpy()


def fits_cube(data: str | bytes) -> np.ndarray:
    """A base64 FITS file (or its bytes) as a float32 (bands, h, w) cube: its first image HDU."""
    import base64
    import io

    from astropy.io import fits

    raw = base64.b64decode(data) if isinstance(data, str) else bytes(data)
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        image = next((h.data for h in hdul if h.is_image and h.data is not None), None)
    if image is None:
        raise ValueError("a FITS file in the request has no image HDU with data")
    cube = np.asarray(image, dtype=np.float32)
    return cube[None] if cube.ndim == 2 else cube


def _cell(value) -> dict | None:
    """One request cell holding a series: a JSON object (text) or a mapping; empty: none."""
    import json

    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    return json.loads(value) if isinstance(value, str) else dict(value)


def request_inputs(table: pd.DataFrame, kinds: Sequence[str]) -> dict:
    """`raw_batch`'s inputs from a request table, one row per object: `image` (a nested
    (bands, h, w) list, or its JSON text) or `fits` (base64 FITS); the catalog columns the
    model's features are made of; `spectrum` ({"wave": [...], "flux": [...], "err": [...]})
    and `lightcurve` ({"time": [...], "band": [...], "mag": [...], "mag_err": [...]} or
    flux/flux_err/zp), each a JSON object or empty where the object has none."""
    import json

    from hyrax_mlops.data.series import lightcurve_table, spectrum_table

    out: dict = {"features": table}
    if "image" in kinds:
        if "fits" in table.columns:
            out["images"] = np.stack([fits_cube(v) for v in table["fits"]])
        elif "image" in table.columns:
            out["images"] = np.stack([np.asarray(json.loads(v) if isinstance(v, str) else v,
                                                 np.float32) for v in table["image"]])
        else:
            raise ValueError("this model reads images: send an `image` or `fits` column")
    for kind, column, parse in (("spectrum", "spectra", spectrum_table),
                                ("lightcurve", "lightcurves", lightcurve_table)):
        if kind in kinds and kind in table.columns:
            cells = [_cell(v) for v in table[kind]]
            out[column] = [None if c is None else parse(pd.DataFrame(c)) for c in cells]
    return out


def request_example(provider, n: int = 2) -> pd.DataFrame:
    """`n` real objects of a dataset as a serving request (see `request_inputs`): the input
    example, and so the signature, of a model that reads more than images."""
    import json

    from hyrax_mlops.data import series as S

    rows = provider.rows()[:n]
    ids = [str(i) for i in provider.data.ids[rows]]
    out = pd.DataFrame(index=range(len(rows)))
    if provider.input_shape:
        out["image"] = [json.dumps(x.tolist()) for x in provider.data.images(rows)]
    scaler = provider.normalizer.features
    for column in sorted({n.rpartition(":")[2] for n in (scaler.names if scaler else [])}):
        out[column] = pd.to_numeric(provider.catalog.iloc[rows][column], errors="coerce"
                                    ).to_numpy(float)
    for name, kind, keep in ((S.SPECTRA, "spectrum", ["wave", "flux", "err"]),
                             (S.LIGHTCURVES, "lightcurve", ["time", "band", "mag", "mag_err"])):
        path = provider.data.root / name
        if not path.is_file():
            continue
        table = pd.read_parquet(path)
        table["object_id"] = table["object_id"].astype(str)
        if "good" in table:  # the pixels ingest found bad travel as a mask
            table["mask"] = (~table["good"].astype(bool)).astype(int)
            keep = [*keep, "mask"]
        groups = dict(iter(table.groupby("object_id", sort=False)))

        def as_json(oid: str, keep=keep, groups=groups) -> str:
            if oid not in groups:
                return ""
            part = groups[oid][keep].astype(object).where(groups[oid][keep].notna(), None)
            return json.dumps({c: part[c].tolist() for c in keep})

        out[kind] = [as_json(oid) for oid in ids]
    return out


def serving_example(provider, model: torch.nn.Module):
    """A model's input example (which gives it its signature): two raw stamps for a model
    of images alone, else two objects as a request table; None for a dataset of neither."""
    if model_kinds(model) == ("image",):
        return provider.data.images(provider.rows()[:2]) if provider.input_shape else None
    return request_example(provider)
