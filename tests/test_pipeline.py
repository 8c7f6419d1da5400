"""The per-pixel pipeline: every star once, atomic writes, resume, kill/restart, Dask, partitioned input,
and a dust screen recovered by the real grid method."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import seed
from pipeline_runner import TinyModel, fake_fit, mock_catalog
from photoinfer.catalog import Flag
from photoinfer.io import pixel_products as pp
from photoinfer.pipeline import PipelineConfig, read_summaries, run_pipeline
from photoinfer.sightline import ImageGrid

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NSIDE = 2


def config(**kw):
    # a coarse image grid keeps these orchestration tests fast (the default grid is tested below)
    base = dict(nside=NSIDE, batch_size=16, seed=seed(), method="fake", write_samples=False, quicklook=False,
                grid=ImageGrid(4, 19, 30, 0, 7, 70))
    return PipelineConfig(**(base | kw))


def same_tables(a, b):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            assert np.array_equal(x, y), k


@pytest.fixture(scope="module")
def cat():
    return mock_catalog(400, seed(), n_nopos=5)


@pytest.fixture(scope="module")
def reference(cat, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    rep = run_pipeline(TinyModel(), cat, out, fake_fit, config())
    return out, read_summaries(out, NSIDE), rep


def test_every_star_exactly_once(cat, reference):
    out, cols, rep = reference
    assert rep.n_stars == len(cat) and rep.stars_fit == len(cat) and rep.n_pixels >= 12
    assert sorted(cols["source_id"]) == sorted(cat.source_id)
    nopos = cols["pixel"] == -1
    assert nopos.sum() == 5 and np.all(cols["flags"][nopos] & Flag.NO_POSITION)
    assert not np.any(cols["flags"][~nopos] & Flag.NO_POSITION)
    from photoinfer.io.tables import read_table
    merged = read_table(out / f"nside{NSIDE}" / "summary.parquet")
    same_tables(merged, cols)
    d = pp.pixel_dir(out, NSIDE, int(cols["pixel"][-1]))
    img = pp.read_images(d / "images.h5")
    n = int(np.sum(cols["pixel"] == cols["pixel"][-1]))
    assert img["images"].shape == (n, 30, 70) and img["grid"] == ImageGrid(4, 19, 30, 0, 7, 70)
    np.testing.assert_allclose(img["images"].sum(axis=(1, 2)) * img["grid"].d_mu * img["grid"].d_E, 1, rtol=0.02)
    m = pp.read_manifest(d)
    assert m["n_stars"] == n and m["files"]["images"]["name"] == "images.h5"


def test_crash_inside_writer_leaves_no_complete_looking_file(cat, reference, tmp_path, monkeypatch):
    import h5py
    real = h5py.Group.create_dataset

    def boom(self, name, *a, **kw):
        if name == "scale":                       # after the images were written to the temporary file
            raise OSError("disk full (simulated)")
        return real(self, name, *a, **kw)
    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="simulated"):
        run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config())
    dirs = [d for d in (tmp_path / f"nside{NSIDE}").iterdir() if d.is_dir()]
    assert dirs
    for d in dirs:
        assert not (d / pp.MANIFEST).exists() and not (d / "images.h5").exists()
        assert not list(d.glob(".*tmp*")), "temporary file left behind"
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config())
    same_tables(read_summaries(tmp_path, NSIDE), reference[1])


def test_resume_skips_finished_and_redoes_changed(cat, reference, tmp_path):
    ref_cols = reference[1]
    first = sorted(set(ref_cols["pixel"].tolist()))[:6]
    r1 = run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config(), pixels=first)
    done = {p: (pp.pixel_dir(tmp_path, NSIDE, p) / pp.MANIFEST).stat().st_mtime_ns for p in first}
    r2 = run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config())
    assert r2.pixels_skipped >= len(first) and r2.pixels_done + r2.pixels_skipped == r2.n_pixels
    assert r2.stars_fit < len(cat)
    for p, t in done.items():
        assert (pp.pixel_dir(tmp_path, NSIDE, p) / pp.MANIFEST).stat().st_mtime_ns == t
    same_tables(read_summaries(tmp_path, NSIDE), ref_cols)
    r3 = run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config())
    assert r3.pixels_done == 0 and r3.stars_fit == 0
    # one star's photometry changes: only its unit is redone
    cat2 = cat.copy()
    cat2.mag[10, 3] += 0.1
    r4 = run_pipeline(TinyModel(), cat2, tmp_path, fake_fit, config())
    assert 1 <= r4.pixels_done <= max(len(u["pixels"]) for u in r4.units) and r4.stars_fit <= 2 * 16
    # other settings: everything is redone
    r5 = run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config(fit_settings={"n_draws": 50}))
    assert r5.pixels_skipped == 0


def _kill_restart(cat_path, out, kills, rng, delay=0.05, extra=(), max_wait=1.0):
    """Start the run, SIGKILL it at a random moment after its first finished pixel, ``kills`` times;
    then run to the end.  Returns the number of finished pixels seen after each kill."""
    cmd = [sys.executable, str(HERE / "pipeline_runner.py"), str(cat_path), str(out), "--nside", str(NSIDE),
           "--batch-size", "16", "--seed", str(seed()), "--delay", str(delay), *extra]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    finished = []
    for _ in range(kills):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until the run has finished at least one pixel, then kill at a random moment
        t0 = time.time()
        while not list(out.glob(f"nside{NSIDE}/*/{pp.MANIFEST}")) and time.time() - t0 < 120 and p.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, max_wait))
        p.send_signal(signal.SIGKILL)
        p.wait()
        finished.append(len(list(out.glob(f"nside{NSIDE}/*/{pp.MANIFEST}"))))
        # between runs: every manifest matches complete, readable files
        for m in out.glob(f"nside{NSIDE}/*/{pp.MANIFEST}"):
            man = pp.read_manifest(m.parent)
            for rec in man["files"].values():
                assert pp.file_record(m.parent / rec["name"]) == rec
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return finished


def test_kill_and_restart_small(cat, reference, tmp_path, rng):
    from photoinfer.io.catalogs import write_catalog
    path = write_catalog(cat, tmp_path / "cat.parquet")
    out = tmp_path / "out"
    finished = _kill_restart(path, out, 2, rng)
    assert finished[0] < reference[2].n_pixels, "the first kill came after the run had finished"
    cols = read_summaries(out, NSIDE)
    assert len(np.unique(cols["source_id"])) == len(cols["source_id"]) == len(cat)
    same_tables(cols, reference[1])


def test_dask_two_workers_same_as_serial(cat, reference, tmp_path):
    rep = run_pipeline(TinyModel(), cat, tmp_path, fake_fit, config(), scheduler="processes", workers=2)
    assert rep.stars_fit == len(cat)
    assert len({u["pid"] for u in rep.units}) == 2 and os.getpid() not in {u["pid"] for u in rep.units}
    same_tables(read_summaries(tmp_path, NSIDE), reference[1])


def test_partitioned_and_chunked_input(cat, reference, tmp_path):
    from photoinfer.io.catalogs import write_catalog
    from photoinfer.io.partitioned import PartitionedCatalog, iter_catalog_chunks, partition_catalog
    path = write_catalog(cat, tmp_path / "cat.parquet")
    chunks = list(iter_catalog_chunks(path, rows=37))
    assert [len(c) for c in chunks][:-1] == [37] * (len(chunks) - 1)
    assert np.array_equal(np.concatenate([c.source_id for c in chunks]), cat.source_id)
    for part_nside in (1, 4):             # coarser and finer than the fit's nside
        part = partition_catalog(path, tmp_path / f"parts{part_nside}", nside=part_nside, rows=50)
        assert isinstance(part, PartitionedCatalog) and len(part) == len(cat)
        from photoinfer.io.partitioned import InMemoryCatalog
        assert part.pixel_counts(NSIDE) == InMemoryCatalog(cat).pixel_counts(NSIDE)
        out = tmp_path / f"out{part_nside}"
        run_pipeline(TinyModel(), tmp_path / f"parts{part_nside}", out, fake_fit, config())
        same_tables(read_summaries(out, NSIDE), reference[1])
    with pytest.raises(ValueError, match="exists"):
        partition_catalog(path, tmp_path / "parts1", nside=1)


@pytest.mark.slow
def test_kill_and_restart_20000(tmp_path, rng):
    """Must-show: 20,000 stars over 48 pixels (nside 2) with the default (μ, E) grid, killed twice
    with SIGKILL at random moments and restarted: the summaries equal an uninterrupted run's."""
    from photoinfer.io.catalogs import write_catalog
    big = mock_catalog(20_000, seed() + 1, n_nopos=20)
    path = write_catalog(big, tmp_path / "cat.parquet")
    ref = tmp_path / "ref"
    t0 = time.time()
    subprocess.run([sys.executable, str(HERE / "pipeline_runner.py"), str(path), str(ref), "--nside", str(NSIDE),
                    "--batch-size", "256", "--seed", str(seed()), "--delay", "0.05"],
                   env=os.environ | {"PYTHONPATH": str(REPO)}, check=True, stdout=subprocess.DEVNULL)
    t_ref = time.time() - t0
    out = tmp_path / "out"
    t0 = time.time()
    finished = _kill_restart(path, out, 2, rng, extra=("--batch-size", "256"), max_wait=60.0)
    t_kill = time.time() - t0
    cols, ref_cols = read_summaries(out, NSIDE), read_summaries(ref, NSIDE)
    print(f"\n20k kill test: uninterrupted {t_ref:.1f} s; killed twice (pixels finished at the kills: {finished}) "
          f"and restarted {t_kill:.1f} s; {len(cols['source_id'])} rows, "
          f"{len(np.unique(cols['source_id']))} unique source_id, {len(np.unique(cols['pixel']))} pixels")
    assert finished[0] < len(np.unique(ref_cols["pixel"]))
    assert len(np.unique(cols["source_id"])) == len(cols["source_id"]) == len(big)
    same_tables(cols, ref_cols)
