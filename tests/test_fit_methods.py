"""``photoinfer fit --method grid|nuts|grid+nuts`` through the command line, at tiny size."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import RELEASED_MODEL, seed
from photoinfer.fitresult import SUMMARY_COLUMNS

TINY = ["--model", str(RELEASED_MODEL), "--grid", "coarse", "--num-warmup", "20", "--num-samples", "10",
        "--num-chains", "2", "--batch-size", "2"]


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, released_model):
    from photoinfer.catalog import Catalog
    from photoinfer.io.catalogs import write_catalog
    rng = np.random.default_rng(seed())
    th = np.array([[5800, 4.4, 0.0], [4800, 2.6, -0.3], [6300, 4.1, -0.5], [5000, 4.6, 0.1], [4700, 2.5, 0.0]],
                  np.float32)
    n = len(th)
    mu, E = rng.uniform(8, 12, n), rng.uniform(0.05, 0.5, n)
    mag = np.asarray(released_model.predict_magnitudes(th, mu, E), np.float64)
    err = np.array([0.01, 0.03, 0.05, 0.02, 0.2])[:, None] * np.ones_like(mag)
    mag = mag + err * rng.normal(size=mag.shape)
    mag[2, 1:] = np.nan                                   # one band: TOO_FEW_BANDS, must keep its row
    plx = 10 ** (2 - mu / 5)
    cat = Catalog.from_arrays(mag, err, bands=released_model.bands, parallax=plx * (1 + 0.1 * rng.normal(size=n)),
                              parallax_err=0.1 * plx)
    path = tmp_path_factory.mktemp("fitm") / "in.parquet"
    write_catalog(cat, path)
    return path


def _run(catalog_path, out, *extra):
    from photoinfer.cli import main
    from photoinfer.io.tables import read_table
    assert main(["-q", "fit", "--catalog", str(catalog_path), "--out", str(out), *TINY, *extra]) == 0
    return read_table(out / "summary.parquet")


def test_method_grid_and_grid_plus_nuts(catalog_path, tmp_path):
    from photoinfer.catalog import Flag
    g = _run(catalog_path, tmp_path / "g", "--method", "grid", "--images")
    assert list(g) == SUMMARY_COLUMNS and len(g["source_id"]) == 5
    assert set(g["method"]) == {"grid"} and g["flags"][2] & Flag.TOO_FEW_BANDS
    assert (tmp_path / "g" / "posterior.nc").exists()
    with h5py.File(tmp_path / "g" / "images.h5") as f:
        im = f["images"][:]
        assert im.shape == (5, 120, 700) and len(f["mu_edges"]) == 121
    ok = np.arange(5) != 2
    np.testing.assert_allclose(im[ok].sum((1, 2)), 1.0, atol=1e-3)
    # grid+nuts: NUTS exactly for the stars whose grid ESS is below the threshold; the others keep the grid's rows
    ess = np.asarray(g["ess_bulk_min"], float)
    thr = float(np.median(ess[ok]))
    low = ok & (ess < thr)
    assert 0 < low.sum() < ok.sum()
    h = _run(catalog_path, tmp_path / "h", "--method", "grid+nuts", "--min-grid-ess", str(thr))
    assert len(h["source_id"]) == 5 and np.array_equal(h["source_id"], g["source_id"])
    assert list(np.asarray(h["method"])[ok]) == ["nuts" if x else "grid" for x in low[ok]]
    assert h["flags"][2] & Flag.TOO_FEW_BANDS and np.isnan(h["teff_p50"][2])
    keep = ok & ~low
    np.testing.assert_allclose(np.asarray(h["ess_bulk_min"])[keep], ess[keep])
    assert np.all(np.isfinite(np.asarray(h["teff_p50"])[ok]))
    # NUTS rows carry NUTS diagnostics (r-hat), grid rows do not
    assert np.all(np.isfinite(np.asarray(h["rhat_max"])[low])) and np.all(np.isnan(np.asarray(h["rhat_max"])[keep]))
    assert (tmp_path / "h" / "posterior.nc").exists()


@pytest.mark.slow   # --method nuts is also the default exercised by tests/test_infer.py::test_cli_fit_tiny
def test_method_nuts_and_bad_arguments(catalog_path, tmp_path):
    from photoinfer.cli import main
    n = _run(catalog_path, tmp_path / "n", "--method", "nuts")
    assert len(n["source_id"]) == 5 and set(np.asarray(n["method"])) == {"nuts"}
    assert main(["fit", "--catalog", str(catalog_path), "--out", str(tmp_path / "x"), *TINY, "--method", "nuts",
                 "--images"]) == 2
