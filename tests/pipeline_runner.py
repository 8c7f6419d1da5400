"""Helpers of the pixel-pipeline checks: the ``photoinfer fit --nside`` command line of the tests, and
SIGKILL/restart of it in a subprocess.

Used by tests/test_pipeline.py (600 stars) and benchmarks/pixels_restart.py (20,000 stars).
:func:`fit_argv` is the command line (real grid method, coarse θ grid); :func:`setup` gives the
same fit function and :class:`~photoinfer.pipeline.PipelineConfig` for an in-process run, built by
the command's own code, so a run in the test process and one in a subprocess are comparable.
:func:`kill_restart` starts the command, SIGKILLs it after a random number of finished pixels
(twice), checks that every manifest then lists complete files, and runs it to the end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: A coarse (μ, E) image grid for the fast tests (the benchmark uses the default 120 × 700).
SMALL_IMAGES = "4,19,30,0,7,70"


def fit_argv(catalog, out, *, nside, batch_size, seed, model, keep=256, n_draws=200, image_grid=SMALL_IMAGES,
             samples=False, quicklook=False, workers=1) -> list[str]:
    """``photoinfer fit --nside`` arguments with the grid method on the coarse θ grid."""
    argv = ["fit", "--catalog", str(catalog), "--out", str(out), "--model", str(model), "--nside", str(nside),
            "--method", "grid", "--grid", "coarse", "--keep", str(keep), "--num-draws", str(n_draws),
            "--batch-size", str(batch_size), "--seed", str(seed), "--image-grid", image_grid, "--workers", str(workers)]
    return argv + ([] if samples else ["--no-posterior"]) + ([] if quicklook else ["--no-quicklook"])


def setup(argv) -> tuple:
    """(fit_fn, PipelineConfig) that ``photoinfer`` + ``argv`` would run."""
    from photoinfer.cli import build_parser
    from photoinfer.commands.pipeline_options import pipeline_setup
    return pipeline_setup(build_parser().parse_args(argv))


def command(argv) -> list[str]:
    """The subprocess command line running ``photoinfer`` + ``argv``."""
    return [sys.executable, "-m", "photoinfer.cli", "-q", *argv]


def finished_pixels(out, nside) -> int:
    """Number of pixels with a manifest (finished) under ``out``."""
    return len(list(Path(out).glob(f"nside{nside}/*/manifest.json")))


def check_manifests(out, nside) -> None:
    """Every manifest lists complete files (sizes and sha256 as recorded)."""
    from photoinfer.io import pixel_products as pp
    for m in Path(out).glob(f"nside{nside}/*/{pp.MANIFEST}"):
        man = pp.read_manifest(m.parent)
        assert man is not None, m
        for rec in man["files"].values():
            assert pp.file_record(m.parent / rec["name"]) == rec, (m.parent, rec)


def kill_restart(cmd, out, nside, n_pixels, rng, *, kills=2, jitter=0.0, timeout=3600.0, stderr=None) -> list[dict]:
    """Start ``cmd``; SIGKILL it ``kills`` times, each once a random number of pixels has finished (drawn
    from 2 … n_pixels − 2, above the previous kill's count) and a further uniform(0, ``jitter``)
    seconds have passed (so that kills land while fitting as well as while writing); then run it
    to the end.

    Returns one record per kill: the target count, the pixels finished when the kill landed, and the
    seconds since that process started.
    """
    env = os.environ | {"PYTHONPATH": str(REPO)}
    lo, records = 2, []
    for k in range(kills):
        hi = n_pixels - 2 - (kills - 1 - k)          # leave room for the later kills
        if hi < lo:
            raise ValueError(f"{n_pixels} pixels are too few for {kills} kills between 2 and n - 2 finished pixels")
        target = int(rng.integers(lo, hi + 1))
        t0 = time.time()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
        while finished_pixels(out, nside) < target and p.poll() is None and time.time() - t0 < timeout:
            time.sleep(0.005)
        if p.poll() is not None:
            raise RuntimeError(f"the run ended (status {p.returncode}) before {target} pixels had finished")
        time.sleep(rng.uniform(0.0, jitter))
        p.send_signal(signal.SIGKILL)
        p.wait()
        n_done = finished_pixels(out, nside)
        records.append({"target": target, "finished_at_kill": n_done,
                        "seconds_after_start": round(time.time() - t0, 2)})
        check_manifests(out, nside)
        lo = n_done + 1
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
                   timeout=timeout)
    return records
