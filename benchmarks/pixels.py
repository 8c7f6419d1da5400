"""End-to-end benchmark of the pixel pipeline: read a Parquet mock, fit per HEALPix pixel, write products.

    python benchmarks/pixels.py --n 100000 --nside 16 --workers 1,2 --method grid --json benchmarks/results/pixels.json

The mock (photometry-only stars with parallaxes, Green et al. error model, a cone of --radius
degrees) is drawn and written to Parquet before the clock starts; each timed run starts from
that file into an empty output directory (so it includes reading, planning, fitting, writing
summaries, images and quick-looks).  Stars/s = stars fit / wall seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--nside", type=int, default=16)
    ap.add_argument("--radius", type=float, default=10.0, help="cone radius [deg] of the mock")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--method", default="grid", choices=("grid", "nuts"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--spacing", default="coarse")
    ap.add_argument("--n-draws", type=int, default=300)
    ap.add_argument("--keep", type=int, default=512)
    ap.add_argument("--num-warmup", type=int, default=200)
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--num-chains", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", action="store_true", help="also write posterior.nc per pixel")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tmp", default=None, help="work directory (default a temporary one)")
    a = ap.parse_args()

    import jax
    import numpy as np
    from photoinfer.io.catalogs import write_catalog
    from photoinfer.io.models import load_model
    from photoinfer.pipeline import PipelineConfig, method_fit_fn, run_pipeline
    from photoinfer.simulate import Cone, simulate_catalog

    work = Path(a.tmp or tempfile.mkdtemp(prefix="pixels_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(a.model)
    t = time.perf_counter()
    cat = simulate_catalog(model, a.n, 1, photometry_only=True, sky=Cone(90.0, 20.0, a.radius))
    path = write_catalog(cat, work / "mock.parquet")
    t_mock = time.perf_counter() - t
    if a.method == "grid":
        settings = {"method": "grid", "grid": a.spacing, "grid_settings": {"n_draws": a.n_draws, "keep": a.keep}}
    else:
        settings = {"method": "nuts", "num_warmup": a.num_warmup, "num_samples": a.num_samples,
                    "num_chains": a.num_chains, "batch_size": min(a.batch_size, 25)}
    config = PipelineConfig(nside=a.nside, batch_size=a.batch_size, seed=1, method=a.method, fit_settings=settings,
                            write_samples=a.samples, quicklook=True)
    runs = []
    for k in [int(x) for x in a.workers.split(",")]:
        out = work / f"out_w{k}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        rep = run_pipeline(model, path, out, method_fit_fn, config, workers=k)
        dt = time.perf_counter() - t
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        runs.append({"workers": k, "scheduler": "serial" if k == 1 else "dask LocalCluster processes",
                     "seconds": round(dt, 2), "stars_fit": rep.stars_fit, "stars_per_s": round(rep.stars_fit / dt, 2),
                     "pixels": rep.n_pixels, "units": rep.n_units, "output_bytes": size,
                     "output_bytes_per_star": round(size / max(rep.stars_fit, 1), 1)})
        print(json.dumps(runs[-1]))
    result = {"benchmark": "pixels pipeline end to end (read Parquet, fit, write per-pixel products)",
              "command": "python benchmarks/pixels.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                  vars(a).items() if v not in (None, False)),
              "n_stars": a.n, "nside": a.nside, "method": a.method, "fit_settings": settings,
              "batch_size": a.batch_size, "mock_seconds": round(t_mock, 1), "runs": runs,
              "jax_devices": [str(d) for d in jax.devices()],
              "gpu": "none in this session (CPU only); the same code runs on a GPU when JAX sees one",
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
              "jax": jax.__version__, "note": "shared 2-core machine: other jobs ran at the same time",
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    np.asarray(0)


if __name__ == "__main__":
    main()
