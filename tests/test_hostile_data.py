"""Hostile and broken user inputs to `ingest`, one parametrized case each: catalogs that are not
tables (binary, empty, header-only, bad or repeated ids, ...), FITS files that are not stamps
(truncated, 1D, 4D, NaNs, ...), and file names that point out of the folder they must be in
(`..`, absolute paths, symlinks out, loops, `~`, NUL bytes, ...) for cutouts, light curves and
spectra.

Each case ends either in a `DataError`/`ConfigError` with a clear message, raised before any
MLflow run exists, or in a dataset whose manifest gives the object (or its light curve /
spectrum) the expected failure reason. For every case an audit hook records each file opened
during the ingest, and the test asserts that the decoy files planted outside the user's folders
(a valid stamp and light curves holding a secret string) and /etc/passwd were never opened, and
that no message, output or artifact repeats their contents.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

import hyrax_mlops as hm
from hyrax_mlops.errors import ConfigError, DataError, HyraxError

from conftest import DATA, in_store

# --- every file opened during an ingest --------------------------------------------------
# Audit hooks cannot be removed: this one records only while RECORDING is set.
OPENED: list[str] = []
RECORDING = [False]


def _audit(event: str, args: tuple) -> None:
    if RECORDING[0] and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)

SECRET = "HYRAX-DECOY-7f3c9a-TOP-SECRET"  # in every decoy file outside the user's folders
INSIDE = "INSIDE-MARKER-5d1e"  # in bad files inside the folders: must not be echoed either
PASSWD = "root:x:0:0"
GOOD_STAMP = DATA / "xdf_fits" / "stamps" / "XDF00001.fits"
REPO = Path(hm.__file__).resolve().parents[1]


@dataclass
class Site:
    """The user's folders (project/ holds the catalog, project/cutouts/ the stamps) and, next
    to them, decoys: outside/secret.fits (a valid stamp), outside/secret.csv and
    outside/secret_spectrum.csv, secret.csv at the store root (../../ from the catalog) and
    project/ABOVE.fits (outside cutouts_dir). All are valid files: opening one would ingest it."""

    root: Path
    project: Path
    cutouts: Path
    outside: Path
    decoys: list[Path]

    def csv(self, text: str, name: str = "catalog.csv") -> str:
        (self.project / name).write_text(text)
        return name

    def raw(self, data: bytes, name: str = "catalog.csv") -> str:
        (self.project / name).write_bytes(data)
        return name

    def stamp(self, name: str, cube: np.ndarray | None = None, **kw) -> Path:
        path = self.cutouts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(good_cube() if cube is None else cube, **kw).writeto(path)
        return path


def good_cube() -> np.ndarray:
    return fits.getdata(GOOD_STAMP).astype(np.float32)


def make_site(root: Path) -> Site:
    project, outside = root / "user" / "project", root / "outside"
    cutouts = project / "cutouts"
    for d in (cutouts, outside):
        d.mkdir(parents=True)
    (cutouts / "GOOD.fits").write_bytes(GOOD_STAMP.read_bytes())
    header = fits.Header({"SECRET": SECRET})
    fits.PrimaryHDU(good_cube(), header=header).writeto(outside / "secret.fits")
    lightcurve = f"time,band,mag,mag_err\n1.0,{SECRET},20.0,0.1\n2.0,{SECRET},20.5,0.1\n"
    (outside / "secret.csv").write_text(lightcurve)
    (outside / "secret_spectrum.csv").write_text(f"wave,flux,{SECRET}\n4000,1.0,1\n5000,2.0,1\n")
    (root / "secret.csv").write_text(lightcurve)
    fits.PrimaryHDU(good_cube(), header=header).writeto(project / "ABOVE.fits")
    decoys = [outside / "secret.fits", outside / "secret.csv", outside / "secret_spectrum.csv",
              root / "secret.csv", project / "ABOVE.fits"]
    return Site(root, project, cutouts, outside, decoys)


@dataclass
class Expect:
    """What a case must end in: an error (type + message regex) before any run, or a failure
    `reason` of `object_id` (of its `modality` for light curves / spectra) in the manifest."""

    error: type[HyraxError] | None = None
    message: str = ""
    object_id: str = "BAD"
    reason: str = ""
    detail: str = ""
    modality: str = ""
    catalog: str = "catalog.csv"
    overrides: dict = field(default_factory=dict)
    check: Callable[[dict], None] | None = None


CASES: dict[str, Callable[[Site], Expect]] = {}


def case(fn: Callable[[Site], Expect]) -> Callable[[Site], Expect]:
    CASES[fn.__name__] = fn
    return fn


def bad_file(site: Site, file: str, reason: str, detail: str = "") -> Expect:
    """A catalog of the good stamp and one object `BAD` whose file is `file`."""
    site.csv(f"object_id,file\nGOOD,GOOD.fits\nBAD,{file}\n")
    return Expect(reason=reason, detail=detail)


def bad_parquet(site: Site, ids: pa.Array, message: str) -> Expect:
    pq.write_table(pa.table({"object_id": ids, "file": ["GOOD.fits"] * len(ids)}),
                   site.project / "catalog.parquet")
    return Expect(DataError, message, catalog="catalog.parquet")


def bad_series(site: Site, column: str, file: str, reason: str, detail: str = "") -> Expect:
    """The good stamp, whose light curve or spectrum is `file`."""
    site.csv(f"object_id,file,{column}\nGOOD,GOOD.fits,{file}\n")
    modality = "lightcurve" if column == "lightcurve_file" else "spectrum"
    return Expect(object_id="GOOD", reason=reason, detail=detail, modality=modality)


# --- catalogs that cannot be used at all: an error before any run -------------------------

@case
def catalog_binary_junk(site):
    site.raw(bytes(range(256)) * 16)
    return Expect(DataError, r"catalog '.*catalog\.csv' is not a text CSV file")


@case
def catalog_empty_file(site):
    site.raw(b"")
    return Expect(DataError, r"catalog '.*catalog\.csv' is empty \(0 bytes\)")


@case
def catalog_header_only(site):
    site.csv("object_id,file\n")
    return Expect(DataError, r"catalog\.csv' has a header but no rows.*Fix")


@case
def catalog_blank_lines_only(site):
    site.csv("\n   \n\n")
    return Expect(DataError, r"catalog\.csv' holds no header and no rows")


@case
def catalog_without_object_id_column(site):
    site.csv("id,file\nGOOD,GOOD.fits\n")
    return Expect(DataError, r"has no 'object_id' column \(columns: id, file\).*Fix: rename")


@case
def catalog_empty_id_cell(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\n,GOOD.fits\n")
    return Expect(DataError, r"catalog '.*catalog\.csv' has an empty object_id in data row\(s\) "
                             r"2 \(row 1 is the first row after the header\)")


@case
def catalog_whitespace_ids(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\n   ,a.fits\n\t,b.fits\n")
    return Expect(DataError, r"empty object_id in data row\(s\) 2, 3 ")


@case
def catalog_duplicate_ids(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\nX,a.fits\nGOOD,b.fits\nX,c.fits\n")
    return Expect(DataError, r"repeats object_id values: 'GOOD' \(rows 1, 3\); 'X' \(rows 2, 4\)"
                             r"\. Fix")


@case
def catalog_duplicate_ids_after_stripping(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\n GOOD ,a.fits\n")
    return Expect(DataError, r"repeats object_id values: 'GOOD' \(rows 1, 2\)")


@case
def catalog_float_ids_with_fractions(site):
    return bad_parquet(site, pa.array([1.0, 2.5]),
                       r"floating-point column with fractional values in data row\(s\) 2\.")


@case
def catalog_nan_ids_in_parquet(site):
    return bad_parquet(site, pa.array([1.0, float("nan")]),
                       r"catalog\.parquet' has an empty object_id in data row\(s\) 2 ")


@case
def catalog_float_ids_above_2_53(site):
    return bad_parquet(site, pa.array([1.0, float(2 ** 53 + 2)]),
                       r"values of 2\*\*53 or more \(data row\(s\) 2\).*lost digits")


@case
def catalog_null_string_ids_in_parquet(site):
    return bad_parquet(site, pa.array(["GOOD", None, "X", None]),
                       r"empty object_id in data row\(s\) 2, 4 ")


@case
def catalog_boolean_ids(site):
    return bad_parquet(site, pa.array([True, False]),
                       r"object_id is a column of type bool; ids must be text or integers")


@case
def catalog_header_only_parquet(site):
    return bad_parquet(site, pa.array([], pa.string()), r"has a header but no rows")


@case
def catalog_csv_named_parquet(site):
    site.raw(b"object_id,file\nGOOD,GOOD.fits\n", "catalog.parquet")
    return Expect(DataError, r"catalog\.parquet' cannot be read as a Parquet table",
                  catalog="catalog.parquet")


@case
def catalog_fits_table_without_object_id(site):
    Table({"id": ["GOOD"], "file": ["GOOD.fits"]}).write(site.project / "catalog.fits")
    return Expect(DataError, r"catalog\.fits' has no 'object_id' column", catalog="catalog.fits")


@case
def catalog_fits_image_not_a_table(site):
    fits.PrimaryHDU(good_cube()).writeto(site.project / "catalog.fits")
    return Expect(DataError, r"catalog\.fits' cannot be read as a FITS table",
                  catalog="catalog.fits")


@case
def catalog_fits_table_without_rows(site):
    Table({"object_id": np.array([], np.int64), "file": np.array([], str)}).write(
        site.project / "catalog.fits")
    return Expect(DataError, r"catalog\.fits' has a header but no rows", catalog="catalog.fits")


@case
def catalog_fits_float_ids_with_fractions(site):
    Table({"object_id": [3.0, 4.25], "file": ["GOOD.fits", "x.fits"]}).write(
        site.project / "catalog.fits")
    return Expect(DataError, r"catalog\.fits': object_id is a floating-point column with "
                             r"fractional values in data row\(s\) 2", catalog="catalog.fits")


@case
def catalog_gzipped_junk(site):
    site.raw(b"this is not gzip at all\n", "catalog.csv.gz")
    return Expect(DataError, r"catalog\.csv\.gz' is not gzip-compressed CSV",
                  catalog="catalog.csv.gz")


@case
def catalog_gzip_of_binary(site):
    site.raw(gzip.compress(bytes(range(256)) * 4), "catalog.csv.gz")
    return Expect(DataError, r"catalog\.csv\.gz' is not a text CSV file",
                  catalog="catalog.csv.gz")


@case
def catalog_wrong_extension(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\n", "catalog.txt")
    return Expect(DataError, r"catalog '.*catalog\.txt' is not \.csv, \.csv\.gz, \.parquet or "
                             r"\.fits.*Fix", catalog="catalog.txt")


@case
def catalog_ragged_rows(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\nX,a.fits,extra,more\n")
    return Expect(DataError, r"catalog\.csv' cannot be read as a CSV table .*Expected 2 fields")


@case
def catalog_not_utf8(site):
    site.raw("object_id,file\n\u00e9t\u00e9,GOOD.fits\n".encode("latin-1"))
    return Expect(DataError, r"catalog\.csv' cannot be read as a CSV table \(UnicodeDecodeError")


@case
def catalog_is_a_directory(site):
    (site.project / "catalog.csv").mkdir()
    return Expect(ConfigError, r"'ingest\.catalog' points to .* not an existing file")


@case
def catalog_missing(site):
    return Expect(ConfigError, r"'ingest\.catalog' points to .* not an existing file or HATS "
                               r"catalog\. Fix")


@case
def cutouts_dir_is_a_file(site):
    site.csv("object_id,file\nGOOD,GOOD.fits\n")
    return Expect(ConfigError, r"'ingest\.cutouts_dir' points to .* not an existing dir",
                  overrides={"ingest.cutouts_dir": str(site.cutouts / "GOOD.fits")})


# --- FITS files that are not usable stamps: a per-object reason ---------------------------

@case
def fits_truncated(site):
    (site.cutouts / "bad.fits").write_bytes(GOOD_STAMP.read_bytes()[:3000])
    return bad_file(site, "bad.fits", "unreadable")


@case
def fits_not_fits_at_all(site):
    (site.cutouts / "bad.fits").write_text(f"{INSIDE}\nthis is a text file\n")
    return bad_file(site, "bad.fits", "unreadable")


@case
def fits_zero_size(site):
    (site.cutouts / "bad.fits").write_bytes(b"")
    return bad_file(site, "bad.fits", "unreadable", r"Empty or corrupt FITS")


@case
def fits_one_dimensional(site):
    site.stamp("bad.fits", np.arange(64, dtype=np.float32))
    return bad_file(site, "bad.fits", "unreadable", r"image has 1 dimensions; expected 2 or 3")


@case
def fits_four_dimensional(site):
    site.stamp("bad.fits", good_cube()[None])
    return bad_file(site, "bad.fits", "unreadable", r"image has 4 dimensions; expected 2 or 3")


@case
def fits_empty_primary(site):
    fits.PrimaryHDU().writeto(site.cutouts / "bad.fits")
    return bad_file(site, "bad.fits", "unreadable", r"no image HDU with data")


@case
def fits_table_only(site):
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU(Table({"x": [1, 2]}))]
    fits.HDUList(hdus).writeto(site.cutouts / "bad.fits")
    return bad_file(site, "bad.fits", "unreadable", r"no image HDU with data")


@case
def fits_zero_length_axis(site):
    site.stamp("bad.fits", np.zeros((3, 0, 64), np.float32))
    return bad_file(site, "bad.fits", "unreadable")


@case
def fits_huge_junk_header(site):
    cards = "".join(f"{INSIDE[:8]}= 'junk {i:07d}'".ljust(80) for i in range(36 * 300))
    (site.cutouts / "bad.fits").write_bytes(b"SIMPLE  =                    T".ljust(80)
                                            + cards.encode())
    return bad_file(site, "bad.fits", "unreadable")


@case
def fits_nan_pixels(site):
    cube = good_cube()
    cube[1, 10:12, 20:25] = np.nan
    site.stamp("bad.fits", cube)
    return bad_file(site, "bad.fits", "nan_pixels", r"^10 non-finite pixels$")


@case
def fits_infinite_pixels(site):
    cube = good_cube()
    cube[0, 0, 0] = np.inf
    site.stamp("bad.fits", cube)
    return bad_file(site, "bad.fits", "nan_pixels", r"^1 non-finite pixels$")


@case
def fits_wrong_shape(site):
    site.stamp("bad.fits", good_cube()[:, :32, :32])
    return bad_file(site, "bad.fits", "wrong_shape", r"shape \[3, 32, 32\], expected \[3, 64, 64\]")


@case
def fits_wrong_band_count(site):
    site.stamp("bad.fits", good_cube()[:2])
    return bad_file(site, "bad.fits", "wrong_shape", r"shape \[2, 64, 64\]")


@case
def fits_missing_band_hdu(site):
    cube = good_cube()
    for name, band in (("GOOD.fits", "G"), ("bad.fits", "R")):
        (site.cutouts / name).unlink(missing_ok=True)
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube[0], name=band)]).writeto(
            site.cutouts / name)
    expect = bad_file(site, "bad.fits", "unreadable", r"no HDU named 'G'")
    expect.overrides = {"ingest.bands": ["G"], "ingest.shape": [1, 64, 64]}
    return expect


@case
def fits_broken_wcs_is_no_wcs(site):
    header = fits.Header({"CTYPE1": "RA---XYZ", "CTYPE2": "DEC--XYZ", "CRVAL1": "junk"})
    site.stamp("bad.fits", header=header)
    site.csv("object_id,file\nGOOD,GOOD.fits\nBAD,bad.fits\n")

    def ingested_without_wcs(manifest: dict) -> None:
        assert manifest["counts"]["ingested"] == 2 and manifest["failures"] == []
        assert manifest["counts"]["without_wcs"] == 2

    return Expect(check=ingested_without_wcs)


# --- file names that leave the folder: outside_folder, never opened -----------------------

@case
def path_parent_dir(site):
    return bad_file(site, "../ABOVE.fits", "outside_folder",
                    r"'\.\./ABOVE\.fits' leads out of .*cutouts through '\.\.'")


@case
def path_parent_chain_to_decoy(site):
    return bad_file(site, "../../../outside/secret.fits", "outside_folder", r"leads out of")


@case
def path_many_parents_to_etc_passwd(site):
    return bad_file(site, "../" * 20 + "etc/passwd", "outside_folder", r"leads out of")


@case
def path_absolute_etc_passwd(site):
    return bad_file(site, "/etc/passwd", "outside_folder",
                    r"'/etc/passwd' is an absolute path outside .*files must be inside")


@case
def path_absolute_decoy(site):
    return bad_file(site, str(site.outside / "secret.fits"), "outside_folder",
                    r"is an absolute path outside")


@case
def path_absolute_through_the_folder_and_out(site):
    return bad_file(site, f"{site.cutouts}/../../../outside/secret.fits", "outside_folder",
                    r"leads out of")


@case
def path_inside_then_out(site):
    (site.cutouts / "sub").mkdir()
    return bad_file(site, "sub/../../ABOVE.fits", "outside_folder", r"leads out of")


@case
def path_symlink_out_absolute(site):
    (site.cutouts / "link.fits").symlink_to(site.outside / "secret.fits")
    return bad_file(site, "link.fits", "outside_folder", r"is a symlink to a file outside")


@case
def path_symlink_out_relative(site):
    (site.cutouts / "link.fits").symlink_to("../../../outside/secret.fits")
    return bad_file(site, "link.fits", "outside_folder", r"leads out of")


@case
def path_symlink_to_etc_passwd(site):
    (site.cutouts / "link.fits").symlink_to("/etc/passwd")
    return bad_file(site, "link.fits", "outside_folder", r"symlink to a file outside")


@case
def path_symlinked_directory_out(site):
    (site.cutouts / "sub").symlink_to(site.outside, target_is_directory=True)
    return bad_file(site, "sub/secret.fits", "outside_folder", r"symlink to a file outside")


@case
def path_symlink_loop(site):
    (site.cutouts / "a.fits").symlink_to("b.fits")
    (site.cutouts / "b.fits").symlink_to("a.fits")
    return bad_file(site, "a.fits", "missing_file", r"'a\.fits' is a loop of symlinks")


@case
def path_dangling_symlink(site):
    (site.cutouts / "link.fits").symlink_to("not_there.fits")
    return bad_file(site, "link.fits", "missing_file", r"'link\.fits' does not exist in")


@case
def path_home_tilde(site):
    return bad_file(site, "~/x.fits", "outside_folder", r"'~/x\.fits' is in a home folder")


@case
def path_directory_named_like_a_file(site):
    (site.cutouts / "dir.fits").mkdir()
    return bad_file(site, "dir.fits", "missing_file", r"'dir\.fits' is a directory, not a file")


@case
def path_through_a_file(site):
    return bad_file(site, "GOOD.fits/x.fits", "missing_file", r"does not exist")


@case
def path_fifo(site):
    os.mkfifo(site.cutouts / "pipe.fits")  # opening it would block: it must not be opened
    return bad_file(site, "pipe.fits", "missing_file", r"'pipe\.fits' is not a regular file")


@case
def path_nul_byte(site):
    pq.write_table(pa.table({"object_id": ["GOOD", "BAD"], "file": ["GOOD.fits", "x\x00.fits"]}),
                   site.project / "catalog.parquet")
    return Expect(reason="missing_file", detail=r"the file name holds a NUL byte",
                  catalog="catalog.parquet")


@case
def path_object_id_traversal(site):
    site.csv("object_id\nGOOD\n../../../outside/secret\n")  # no file column: <object_id>.fits
    return Expect(object_id="../../../outside/secret", reason="outside_folder",
                  detail=r"leads out of")


# --- light curves and spectra: outside the catalog's folder, or not what they claim -------

@case
def lightcurve_etc_passwd(site):
    return bad_series(site, "lightcurve_file", "/etc/passwd", "outside_folder",
                      r"'/etc/passwd' is an absolute path outside .*catalog's folder")


@case
def spectrum_parent_chain(site):
    return bad_series(site, "spectrum_file", "../../secret.csv", "outside_folder",
                      r"'\.\./\.\./secret\.csv' leads out of")


@case
def spectrum_absolute_decoy(site):
    return bad_series(site, "spectrum_file", str(site.outside / "secret_spectrum.csv"),
                      "outside_folder", r"absolute path outside")


@case
def lightcurve_symlink_out(site):
    (site.project / "lc").mkdir()
    (site.project / "lc" / "link.csv").symlink_to(site.outside / "secret.csv")
    return bad_series(site, "lightcurve_file", "lc/link.csv", "outside_folder",
                      r"symlink to a file outside")


@case
def lightcurve_home_tilde(site):
    return bad_series(site, "lightcurve_file", "~/lc.csv", "outside_folder", r"home folder")


@case
def lightcurve_directory(site):
    (site.project / "lc.csv").mkdir()
    return bad_series(site, "lightcurve_file", "lc.csv", "missing_lightcurve",
                      r"is a directory, not a file")


@case
def lightcurve_text_where_numbers_go(site):
    (site.project / "lc.csv").write_text(f"time,band,mag\n{INSIDE},g,20.1\n")
    return bad_series(site, "lightcurve_file", "lc.csv", "unreadable_lightcurve",
                      r"^the light curve's column time is not numeric$")


@case
def lightcurve_wrong_columns(site):
    (site.project / "lc.csv").write_text(f"{INSIDE},other\n1,2\n")
    return bad_series(site, "lightcurve_file", "lc.csv", "unreadable_lightcurve",
                      r"a light curve needs columns time and band; expected a CSV or Parquet")


@case
def lightcurve_binary_junk(site):
    (site.project / "lc.parquet").write_bytes(INSIDE.encode() + bytes(range(256)))
    return bad_series(site, "lightcurve_file", "lc.parquet", "unreadable_lightcurve",
                      r"not readable as a lightcurve; expected a CSV or Parquet table")


@case
def spectrum_fits_without_wave(site):
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU(Table({INSIDE[:8]: [1.0], "FLUX": [2.0]}))]
    fits.HDUList(hdus).writeto(site.project / "sp.fits")
    return bad_series(site, "spectrum_file", "sp.fits", "unreadable_spectrum",
                      r"a spectrum needs WAVE and FLUX columns")


# -------------------------------------------------------------------------------------------

def allowed_roots(site: Site) -> list[str]:
    """Where an ingest may open files: the store (the user's folders, the tracking store),
    the code and Python, temporary files, and system files (not /etc/passwd: checked)."""
    home = Path.home()
    return [str(p) for p in (site.root.parent, REPO, sys.prefix, sys.base_prefix,
                             tempfile.gettempdir(), "/proc", "/dev", "/sys", "/etc",
                             "/usr/share/zoneinfo", home / ".config" / "mlflow",
                             home / ".cache")]


def check_opened(site: Site, opened: list[str]) -> None:
    forbidden = {os.path.realpath(p) for p in site.decoys} | {"/etc/passwd", "/etc/shadow"}
    names = {p.name for p in site.decoys} | {"passwd", "shadow"}
    outside = str(site.outside) + os.sep
    roots = allowed_roots(site)
    for path in opened:
        if not os.path.isabs(path):  # relative to a directory fd (e.g. rmtree): by name
            assert os.path.basename(path) not in names, f"opened {path!r}"
            continue
        for p in {os.path.normpath(path), os.path.realpath(path)}:
            assert p not in forbidden and not p.startswith(outside), f"opened {path!r} ({p})"
            assert any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots), \
                f"opened {path!r}, outside every allowed folder"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One tracking store for every case (a new SQLite store costs seconds): each case has
    its own folders inside it, and counts the runs it adds."""
    with in_store(tmp_path_factory.mktemp("hostile")) as root:
        yield root


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(shared_store: Path, name: str, capsys) -> None:
    site = make_site(shared_store / name)
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    expect = CASES[name](site)
    overrides = {"tracking.experiment": "test", "ingest.cutouts_dir": str(site.cutouts),
                 "ingest.catalog": str(site.project / expect.catalog),
                 "ingest.shape": [3, 64, 64], **expect.overrides}
    OPENED.clear()
    RECORDING[0] = True
    try:
        if expect.error:
            with pytest.raises(HyraxError) as info:
                hm.ingest(None, overrides)
        else:
            run = hm.ingest(None, overrides)
    finally:
        RECORDING[0] = False
    check_opened(site, list(OPENED))  # first: nothing outside was opened, whatever else
    printed = "".join(capsys.readouterr())

    if expect.error:
        shown = str(info.value)
        assert type(info.value) is expect.error, shown
        assert re.search(expect.message, shown), shown
        assert "Traceback" not in shown and "\n" not in shown
        assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before  # no run
        artifacts = ""
    else:
        assert mlflow.get_run(run.run_id).info.status == "FINISHED"
        root = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id,
                                                        artifact_path="dataset"))
        manifest = __import__("json").loads((root / "manifest.json").read_text())
        artifacts = "".join(p.read_bytes().decode("latin-1") for p in root.rglob("*")
                            if p.is_file())
        shown = "\n".join(f"{f['reason']}: {f['detail']}" for f in manifest["failures"])
        if expect.check:
            expect.check(manifest)
        else:
            [failure] = [f for f in manifest["failures"] if f["object_id"] == expect.object_id]
            assert failure["reason"] == expect.reason, failure
            assert re.search(expect.detail, failure["detail"]), failure
            if expect.modality:
                assert failure["modality"] == expect.modality
                assert manifest["counts"]["modality_failures"] == 1
            ids = set(pd.read_parquet(root / "catalog.parquet")["object_id"])
            assert "GOOD" in ids and (expect.modality or expect.object_id not in ids)
    for text in (shown, printed, artifacts):
        assert SECRET not in text and INSIDE not in text and PASSWD not in text


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 40
