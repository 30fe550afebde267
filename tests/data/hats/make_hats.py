"""Build the small HATS catalogs in this folder from real catalogs in tests/data, with hats-import.

    python tests/data/hats/make_hats.py      # from the repository root; rewrites the catalogs

- `sky_objects`: the 25 positions of `tests/data/sky/catalog.csv` (objects on and off the four
  HST images of Abell 2744): the object list of a survey download.
- `../multimodal/objects_hats`: the rows of `tests/data/multimodal/objects.csv` that have a
  position (a HATS catalog is partitioned by position, so the 10 OGLE rows without one cannot be
  in it). It sits beside `spectra/` and `lightcurves/`: the files a catalog names are found in
  the folder that holds the catalog, for a HATS catalog as for a file.
- `oac_transients`: the 400 Open Astronomy Catalog transients of
  `tests/data/crossmatch/oac_transients.csv`, split into many small partitions
  (`pixel_threshold`), so a cone search reads a few of them: a crossmatch reference.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parent


def build(name: str, csv: Path, pixel_threshold: int, keep=None, where: Path = HERE) -> None:
    from dask.distributed import Client
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    with tempfile.TemporaryDirectory() as tmp:
        table = pd.read_csv(csv, dtype={"object_id": str})
        if keep is not None:
            table = table[keep(table)]
        source = Path(tmp) / f"{name}.parquet"
        table.to_parquet(source, index=False)
        out = where / name
        shutil.rmtree(out, ignore_errors=True)
        args = ImportArguments(
            output_artifact_name=name, output_path=str(where), input_file_list=[str(source)],
            file_reader="parquet", ra_column="ra", dec_column="dec",
            pixel_threshold=pixel_threshold, highest_healpix_order=6,
            tmp_dir=tmp, progress_bar=False, resume=False)
        with Client(n_workers=1, threads_per_worker=1, processes=False,
                    dashboard_address=None) as client:
            pipeline_with_client(args, client)
        print(f"{name}: {len(table)} rows -> {out.relative_to(DATA.parent.parent)}")


if __name__ == "__main__":
    build("sky_objects", DATA / "sky" / "catalog.csv", 1000)
    build("objects_hats", DATA / "multimodal" / "objects.csv", 1000,
          keep=lambda t: t["ra"].notna() & t["dec"].notna(), where=DATA / "multimodal")
    build("oac_transients", DATA / "crossmatch" / "oac_transients.csv", 30)
