"""The per-pixel pipeline with the real grid method: every star once, atomic writes, resume,
SIGKILL/restart, Dask, partitioned input, and the ``photoinfer fit --nside`` command."""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import RELEASED_MODEL, seed
from pipeline_runner import SMALL_IMAGES, command, fit_argv, kill_restart, setup
from photoinfer.catalog import Flag
from photoinfer.io import pixel_products as pp
from photoinfer.pipeline import method_fit_fn, read_summaries, run_pipeline
from photoinfer.sightline import ImageGrid

NSIDE, BATCH = 16, 64
pytestmark = pytest.mark.skipif(not RELEASED_MODEL.exists(), reason="released model not available")
FAILED = Flag.TOO_FEW_BANDS | Flag.NOT_CONVERGED | Flag.FIT_FAILED | Flag.OUTSIDE_VALIDITY


def argv(catalog="CATALOG", out="OUT", **kw):
    return fit_argv(catalog, out, nside=NSIDE, batch_size=BATCH, seed=seed(), model=RELEASED_MODEL, **kw)


def cfg(**kw):
    """The PipelineConfig of ``photoinfer fit`` + :func:`argv` (with changes ``kw``)."""
    from dataclasses import replace
    fit_fn, c = setup(argv())
    assert fit_fn is method_fit_fn
    return replace(c, **kw)


def same_tables(a, b):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=k)     # NaN == NaN here
        else:
            assert np.array_equal(x, y), k


@pytest.fixture(scope="module")
def cat(released_model):
    """600 mock stars in a 6° cone (16 pixels at nside 16)."""
    from photoinfer.simulate import Cone, simulate_catalog
    return simulate_catalog(released_model, 600, seed(), photometry_only=True, sky=Cone(90.0, 10.0, 6.0))


@pytest.fixture(scope="module")
def cat_path(cat, tmp_path_factory):
    from photoinfer.io.catalogs import write_catalog
    return write_catalog(cat, tmp_path_factory.mktemp("cat") / "cat.parquet")


@pytest.fixture(scope="module")
def reference(released_model, cat, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    rep = run_pipeline(released_model, cat, out, method_fit_fn, cfg())
    return out, read_summaries(out, NSIDE), rep


def test_every_star_exactly_once(cat, reference):
    out, cols, rep = reference
    assert rep.n_stars == len(cat) and rep.stars_fit == len(cat) and rep.n_pixels >= 12
    assert sorted(cols["source_id"]) == sorted(cat.source_id)
    assert np.all(cols["pixel"] >= 0) and not np.any(cols["flags"] & Flag.NO_POSITION)
    assert np.all(cols["method"] == "grid")
    fit_ok = (cols["flags"] & FAILED) == 0
    assert fit_ok.mean() > 0.5 and np.all(np.isfinite(cols["mu_p50"][fit_ok]))
    from photoinfer.io.tables import read_table
    same_tables(read_table(out / f"nside{NSIDE}" / "summary.parquet"), cols)
    p = int(np.bincount(cols["pixel"]).argmax())
    d = pp.pixel_dir(out, NSIDE, p)
    img = pp.read_images(d / "images.h5")
    n = int(np.sum(cols["pixel"] == p))
    assert img["images"].shape == (n, 30, 70) and img["grid"] == ImageGrid.parse(SMALL_IMAGES)
    assert img["attrs"]["image_source"] == "grid"
    inside = (cols["image_frac_outside"][cols["pixel"] == p] < 0.01) & (cols["flags"][cols["pixel"] == p] & FAILED == 0)
    mass = img["images"].sum(axis=(1, 2)) * img["grid"].d_mu * img["grid"].d_E
    np.testing.assert_allclose(mass[inside], 1, rtol=0.02)
    m = pp.read_manifest(d)
    assert m["n_stars"] == n and m["files"]["images"]["name"] == "images.h5" and m["settings"]["method"] == "grid"


def test_stars_without_position(released_model, cat, tmp_path):
    """Stars without (l, b) are fit with the position-free prior in pixel -1 (nopos/), flagged, none lost."""
    sub = cat.subset(np.arange(80))
    sub.l[:5] = np.nan
    sub.b[:5] = np.nan
    run_pipeline(released_model, sub, tmp_path, method_fit_fn, cfg())
    cols = read_summaries(tmp_path, NSIDE)
    assert sorted(cols["source_id"]) == sorted(sub.source_id)
    nopos = cols["pixel"] == -1
    assert set(cols["source_id"][nopos]) == set(sub.source_id[:5])
    assert np.all(cols["flags"][nopos] & Flag.NO_POSITION) and not np.any(cols["flags"][~nopos] & Flag.NO_POSITION)
    assert np.isfinite(cols["mu_p50"][nopos & (cols["flags"] & FAILED == 0)]).all()
    assert pp.read_manifest(tmp_path / f"nside{NSIDE}" / "nopos")["pixel"] == -1


def test_grid_method_is_deterministic(released_model, cat):
    """Same stars and seed: identical draws (the kill and Dask checks rely on it); another seed: other draws."""
    sub = cat.subset(np.arange(BATCH))
    s = cfg().fit_settings | {"image_grid": cfg().grid}
    a, b = (method_fit_fn(released_model, sub, seed=3, **s) for _ in range(2))
    c = method_fit_fn(released_model, sub, seed=4, **s)
    np.testing.assert_array_equal(a.samples["mu"], b.samples["mu"])
    assert not np.array_equal(a.samples["mu"], c.samples["mu"], equal_nan=True)


def test_crash_inside_writer_leaves_no_complete_looking_file(released_model, cat, reference, tmp_path, monkeypatch):
    import h5py
    real = h5py.Group.create_dataset

    def boom(self, name, *a, **kw):
        if name == "scale":                       # after the images were written to the temporary file
            raise OSError("disk full (simulated)")
        return real(self, name, *a, **kw)
    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="simulated"):
        run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg())
    dirs = [d for d in (tmp_path / f"nside{NSIDE}").iterdir() if d.is_dir()]
    assert dirs
    for d in dirs:
        assert not (d / pp.MANIFEST).exists() and not (d / "images.h5").exists()
        assert not list(d.glob(".*tmp*")), "temporary file left behind"
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg())
    same_tables(read_summaries(tmp_path, NSIDE), reference[1])


def test_resume_skips_finished_and_redoes_changed(released_model, cat, reference, tmp_path):
    ref_cols = reference[1]
    first = sorted(set(ref_cols["pixel"].tolist()))[:6]
    run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg(), pixels=first)
    done = {p: (pp.pixel_dir(tmp_path, NSIDE, p) / pp.MANIFEST).stat().st_mtime_ns for p in first}
    r2 = run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg())
    assert r2.pixels_skipped >= len(first) and r2.pixels_done + r2.pixels_skipped == r2.n_pixels
    assert r2.stars_fit < len(cat)
    for p, t in done.items():
        assert (pp.pixel_dir(tmp_path, NSIDE, p) / pp.MANIFEST).stat().st_mtime_ns == t
    same_tables(read_summaries(tmp_path, NSIDE), ref_cols)
    r3 = run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg())
    assert r3.pixels_done == 0 and r3.stars_fit == 0
    # one star's photometry changes: only its pixel is redone (its shared batch is refit whole)
    from photoinfer.catalog import INFERENCE_UNUSABLE
    i = int(np.flatnonzero(np.isfinite(cat.mag[:, 3]) & ((cat.flags & int(INFERENCE_UNUSABLE)) == 0))[0])  # fit, band 3 seen
    cat2 = cat.copy()
    cat2.mag[i, 3] += 0.1
    p_changed = ref_cols["pixel"][ref_cols["source_id"] == cat.source_id[i]][0]
    r4 = run_pipeline(released_model, cat2, tmp_path, method_fit_fn, cfg())
    assert r4.pixels_done == 1 and r4.stars_fit <= np.sum(ref_cols["pixel"] == p_changed) + BATCH
    # another seed: everything is redone
    r5 = run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg(seed=seed() + 1))
    assert r5.pixels_skipped == 0 and r5.pixels_done == r5.n_pixels


def test_kill_and_restart(cat, cat_path, reference, tmp_path, rng):
    """``photoinfer fit --nside`` SIGKILLed twice after a random number of finished pixels (2 … n − 2),
    then restarted: summaries identical to the uninterrupted (in-process) run, every star once."""
    out = tmp_path / "out"
    kills = kill_restart(command(argv(cat_path, out)), out, NSIDE, reference[2].n_pixels, rng, timeout=300)
    assert all(2 <= k["finished_at_kill"] < reference[2].n_pixels for k in kills), kills
    cols = read_summaries(out, NSIDE)
    assert len(np.unique(cols["source_id"])) == len(cols["source_id"]) == len(cat)
    same_tables(cols, reference[1])


def test_dask_two_workers_same_as_serial(released_model, cat, reference, tmp_path):
    rep = run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg(), scheduler="processes", workers=2)
    assert rep.stars_fit == len(cat)
    assert len({u["pid"] for u in rep.units}) == 2 and os.getpid() not in {u["pid"] for u in rep.units}
    same_tables(read_summaries(tmp_path, NSIDE), reference[1])


def test_partitioned_and_chunked_input(released_model, cat, cat_path, reference, tmp_path):
    from photoinfer.io.partitioned import InMemoryCatalog, PartitionedCatalog, iter_catalog_chunks, partition_catalog
    chunks = list(iter_catalog_chunks(cat_path, rows=37))
    assert [len(c) for c in chunks][:-1] == [37] * (len(chunks) - 1)
    assert np.array_equal(np.concatenate([c.source_id for c in chunks]), cat.source_id)
    for part_nside in (4, 32):             # coarser and finer than the fit's nside
        part = partition_catalog(cat_path, tmp_path / f"parts{part_nside}", nside=part_nside, rows=50)
        assert isinstance(part, PartitionedCatalog) and len(part) == len(cat)
        assert part.pixel_counts(NSIDE) == InMemoryCatalog(cat).pixel_counts(NSIDE)
        out = tmp_path / f"out{part_nside}"
        run_pipeline(released_model, tmp_path / f"parts{part_nside}", out, method_fit_fn, cfg())
        same_tables(read_summaries(out, NSIDE), reference[1])
    with pytest.raises(ValueError, match="exists"):
        partition_catalog(cat_path, tmp_path / "parts4", nside=4)


def test_fit_command_with_nside(cat, cat_path, reference, tmp_path, capsys):
    """``photoinfer fit --nside --pixels`` in this process: the reference's rows for those pixels, every
    product (posterior.nc readable)."""
    from photoinfer.cli import main
    from photoinfer.posterior import load_inference_data
    cols = reference[1]
    two = [int(p) for p in np.unique(cols["pixel"][cols["pixel"] >= 0])[:2]]
    rc = main(["-q", *argv(cat_path, tmp_path, samples=True, quicklook=True), "--pixels", ",".join(map(str, two))])
    assert rc == 0, capsys.readouterr().err
    got = read_summaries(tmp_path, NSIDE, pixels=two)
    same_tables(got, {k: v[np.isin(cols["pixel"], two)] for k, v in cols.items()})
    d = pp.pixel_dir(tmp_path, NSIDE, two[0])
    assert set(pp.read_manifest(d)["files"]) == {"summary", "images", "posterior", "quicklook"}
    idata = load_inference_data(d / "posterior.nc")
    assert idata.posterior["mu"].shape[-1] == np.sum(got["pixel"] == two[0])
    assert main(["fit", "--catalog", str(cat_path), "--out", str(tmp_path), "--model", str(RELEASED_MODEL),
                 "--nside", "3"]) == 2
    assert "nside must be a power of two" in capsys.readouterr().err
    assert main(["fit", "--catalog", str(cat_path), "--out", str(tmp_path / "x"), "--model", str(RELEASED_MODEL),
                 "--workers", "2"]) == 2
    assert "--workers need --nside" in capsys.readouterr().err
