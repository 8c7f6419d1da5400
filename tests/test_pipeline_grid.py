"""The pixel pipeline's physics: a dust screen recovered by the grid method (and, slow, by NUTS), and the example."""
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import RELEASED_MODEL, seed
from photoinfer.pipeline import PipelineConfig, read_summaries, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def _screen_run(model, tmp_path, n, fit_settings, batch_size):
    """Fit ``n`` stars of one pixel behind a screen (E 0.02 → 1.5 at μ = 11); returns (images, step found)."""
    from photoinfer.io.pixel_products import read_images
    from photoinfer.pipeline import method_fit_fn
    from photoinfer.sightline import locate_step
    from photoinfer.simulate import Cone, simulate_catalog
    cat = simulate_catalog(model, n, seed(), photometry_only=True, sky=Cone(90.0, 10.0, 0.5),
                           dust_screen=(MU_S, E_S))
    cfg = PipelineConfig(nside=4, batch_size=batch_size, seed=seed(), method=fit_settings["method"],
                         write_samples=False, fit_settings=fit_settings)
    run_pipeline(model, cat, tmp_path, method_fit_fn, cfg)
    (d,) = [p for p in (tmp_path / "nside4").iterdir() if p.is_dir()]
    img = read_images(d / "images.h5")
    assert (d / "quicklook.png").stat().st_size > 1000
    assert len(read_summaries(tmp_path, 4)["source_id"]) == n
    return img, locate_step(img["profile_median_E"], img["stack"], img["grid"])


MU_S, E_S = 11.0, 1.5


@pytest.mark.skipif(not RELEASED_MODEL.exists(), reason="released model not available")
def test_dust_screen_recovered_by_grid(released_model, tmp_path):
    """A sightline with a screen (E jumps from 0.02 to 1.5 at μ = 11): the stacked image and the
    median E(μ) profile put the jump within 0.3 mag of the truth."""
    img, (est, e_near, e_far) = _screen_run(released_model, tmp_path, 400, dict(
        method="grid", grid="coarse", grid_settings=dict(n_draws=300, keep=512)), 128)
    assert img["attrs"]["image_source"] == "grid"
    assert abs(est - MU_S) <= 0.3, (est, e_near, e_far)
    assert abs(e_far - E_S) < 0.15 and e_near < 0.3


@pytest.mark.slow
@pytest.mark.skipif(not RELEASED_MODEL.exists(), reason="released model not available")
def test_dust_screen_recovered_by_nuts(released_model, tmp_path):
    """The same screen from per-star NUTS (images = smoothed histograms of the draws), 150 stars."""
    img, (est, e_near, e_far) = _screen_run(released_model, tmp_path, 150, dict(
        method="nuts", num_warmup=200, num_samples=100, num_chains=2, batch_size=25), 25)
    print(f"\nNUTS screen: step at mu = {est:.2f}, E {e_near:.2f} -> {e_far:.2f}")
    assert img["attrs"]["image_source"] == "nuts-histogram"
    assert abs(est - MU_S) <= 0.3, (est, e_near, e_far)
    assert abs(e_far - E_S) < 0.15 and e_near < 0.3


def test_example_runs_tiny(tmp_path, capsys):
    import runpy
    argv = sys.argv
    sys.argv = ["pixels_pipeline.py", "--n", "60", "--out", str(tmp_path), "--nside", "2", "--model", str(RELEASED_MODEL)]
    try:
        runpy.run_path(str(REPO / "examples" / "pixels_pipeline.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert "stars/s" in capsys.readouterr().out
