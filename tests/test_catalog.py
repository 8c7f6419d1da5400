"""Catalog reading, validation flags, bad input and the preparation steps (METHOD §6)."""
import numpy as np
import pytest

from photoinfer import catalog as C
from photoinfer.catalog import Catalog, Flag
from photoinfer.conventions import DEFAULT_BANDS, band_set
from photoinfer.io.catalogs import CatalogFormatError, catalog_to_columns, read_catalog, write_catalog


def small(n=5, seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(12, 16, (n, 13))
    return Catalog.from_arrays(mag, np.full((n, 13), 0.03), parallax=rng.uniform(0.5, 2, n),
                               parallax_err=np.full(n, 0.05), theta=np.tile([5000.0, 4.0, 0.0], (n, 1)),
                               theta_cov=np.tile(np.diag([100.0 ** 2, 0.1 ** 2, 0.1 ** 2]), (n, 1, 1)),
                               E0=np.full(n, 0.1), sigma_E0=np.full(n, 0.05), r_source=["sfd"] * n)


def test_released_sample_reads(sample_8k):
    assert len(sample_8k) == 8000
    assert sample_8k.bands == DEFAULT_BANDS
    assert set(sample_8k.r_source) == {"sfd", "b19", "default"}
    assert np.nanmin(sample_8k.mag_err) >= 0.02 - 1e-6


@pytest.mark.parametrize("ext", ["parquet", "csv", "fits"])
def test_round_trip(tmp_path, sample_8k, ext):
    cat = sample_8k.subset(np.arange(200))
    path = write_catalog(cat, tmp_path / f"c.{ext}")
    back = read_catalog(path)
    np.testing.assert_array_equal(back.source_id, cat.source_id)
    np.testing.assert_allclose(back.mag, cat.mag, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(back.theta, cat.theta, rtol=1e-6)
    sym = 0.5 * (cat.theta_cov + np.swapaxes(cat.theta_cov, 1, 2))
    np.testing.assert_allclose(back.theta_cov, sym, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(back.r_source, cat.r_source)
    np.testing.assert_allclose(back.extra["r_fit"], cat.extra["r_fit"], rtol=1e-6)


def test_bad_values_are_flagged_not_dropped():
    cat = small(8)
    cat.mag[0, 4] = np.inf           # infinite magnitude
    cat.mag_err[1, 2] = -0.1         # negative error
    cat.mag[2, 0] = np.nan           # missing reference band
    cat.theta_cov[3] = np.diag([1.0, -1.0, 1.0])  # not positive-definite
    cat.theta[4, 1] = np.nan         # partly missing θ
    cat.parallax[5] = 0.0            # zero parallax
    cat.parallax[6] = -0.3           # negative parallax
    cat.parallax_err[7] = np.nan     # parallax without error
    cat.validate()
    assert len(cat) == 8
    assert cat.flags[0] & Flag.BAD_MAGNITUDE and np.isnan(cat.mag[0, 4])
    assert cat.flags[1] & Flag.BAD_MAGNITUDE and np.isnan(cat.mag[1, 2])
    assert cat.flags[2] & Flag.NO_REFERENCE
    assert cat.flags[3] & Flag.BAD_THETA and cat.flags[4] & Flag.BAD_THETA
    assert cat.flags[5] & Flag.NONPOSITIVE_PARALLAX and cat.flags[6] & Flag.NONPOSITIVE_PARALLAX
    assert cat.flags[7] & Flag.BAD_PARALLAX and np.isnan(cat.parallax[7])
    assert not cat.usable()[[2, 3, 4]].any() and cat.usable()[[0, 1, 5, 6, 7]].all()
    assert "NO_REFERENCE" in cat.problems()[0]


def test_missing_required_columns_are_named(tmp_path):
    cols = catalog_to_columns(small())
    for drop, name in [("gaia_g_mag", "gaia_g_mag"), ("ps1_r_mag_err", "ps1_r_mag_err"),
                       ("parallax_error", "parallax_error"), ("logg_err", "logg_err"), ("ebv_err", "ebv_err")]:
        c = {k: v for k, v in cols.items() if k != drop}
        path = write_catalog(small(), tmp_path / "x.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table(c), path)
        with pytest.raises(CatalogFormatError, match=name):
            read_catalog(path)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_catalog(tmp_path / "nope.parquet")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(CatalogFormatError, match="x.txt"):
        read_catalog(tmp_path / "x.txt")


def test_duplicate_source_id_and_shape_errors():
    with pytest.raises(ValueError, match="not unique"):
        Catalog.from_arrays(np.ones((2, 13)), np.ones((2, 13)), source_id=[1, 1])
    with pytest.raises(ValueError, match="mag has 12 columns"):
        Catalog.from_arrays(np.ones((2, 12)), np.ones((2, 12)))


def test_radec_converted_to_galactic(tmp_path):
    cols = catalog_to_columns(small(2))
    cols["ra"], cols["dec"] = np.array([266.40499, 192.85948]), np.array([-28.93617, 27.12825])
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(cols), tmp_path / "x.parquet")
    cat = read_catalog(tmp_path / "x.parquet")
    np.testing.assert_allclose(cat.l[0] % 360, 0.0, atol=0.05)  # Galactic centre
    np.testing.assert_allclose(cat.b[1], 90.0, atol=0.05)        # north Galactic pole


def test_user_band_set(tmp_path):
    bands = band_set(["r", "g", "i", "Y_custom"])
    cat = Catalog.from_arrays(np.full((3, 4), 15.0), np.full((3, 4), 0.02), bands=bands)
    path = write_catalog(cat, tmp_path / "u.csv")
    back = read_catalog(path, bands)
    assert back.bands.reference.name == "r" and "y_custom_mag" in catalog_to_columns(back)
    np.testing.assert_allclose(back.mag, cat.mag)


def test_preparation_steps_report_counts():
    cat = small(4)
    cat.mag_err[0, 3] = 0.5
    cat.theta_cov[1, 0, 0] = 300.0 ** 2
    cat.atm_source[:] = ["apogee", "lamost", "galah", "apogee"]
    out, reports = C.prepare(cat)
    by = {r.step: r for r in reports}
    assert by["add_error_floor"].n_values == 4 * 13
    np.testing.assert_allclose(out.mag_err[2, 1], np.hypot(0.03, 0.02))
    assert by["drop_noisy_bands"].n_values == 1 and np.isnan(out.mag[0, 3])
    assert by["vega_to_ab"].n_values == 8
    np.testing.assert_allclose(out.mag[:, 11] - cat.mag[:, 11], 2.699)
    assert by["theta_error_cut"].n_stars == 1 and out.flags[1] & Flag.CUT_THETA_ERROR and len(out) == 4
    np.testing.assert_allclose(out.theta[0], cat.theta[0] + [23.05, 0.0119, 0.0502])
    assert by["survey_zero_points"].n_stars == 2
    np.testing.assert_allclose(out.sigma_E0, np.hypot(0.05, 0.02))
    assert cat.mag_err[2, 1] == 0.03  # input untouched
