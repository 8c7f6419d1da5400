"""The pixel pipeline's physics: a dust screen recovered by the grid method (and, slow, by NUTS), and the example."""
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import RELEASED_MODEL, seed
from photoinfer.pipeline import PipelineConfig, read_summaries, run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not RELEASED_MODEL.exists(), reason="released model not available")
def test_dust_screen_recovered_by_grid(released_model, tmp_path):
    """A sightline with a screen (E jumps from 0.02 to 1.5 at μ = 11): the stacked image and the
    median E(μ) profile put the jump within 0.3 mag of the truth."""
    from photoinfer.io.pixel_products import read_images
    from photoinfer.pipeline import method_fit_fn
    from photoinfer.sightline import locate_step
    from photoinfer.simulate import Cone, simulate_catalog
    mu_s, E_s = 11.0, 1.5
    cat = simulate_catalog(released_model, 400, seed(), photometry_only=True, sky=Cone(90.0, 10.0, 0.5),
                           dust_screen=(mu_s, E_s))
    cfg = PipelineConfig(nside=4, batch_size=128, seed=seed(), method="grid", write_samples=False,
                         fit_settings=dict(method="grid", grid="coarse", grid_settings=dict(n_draws=300, keep=512)))
    run_pipeline(released_model, cat, tmp_path, method_fit_fn, cfg)
    (d,) = [p for p in (tmp_path / "nside4").iterdir() if p.is_dir()]
    img = read_images(d / "images.h5")
    assert img["attrs"]["image_source"] == "grid"
    assert (d / "quicklook.png").stat().st_size > 1000
    est, e_near, e_far = locate_step(img["profile_median_E"], img["stack"], img["grid"])
    assert abs(est - mu_s) <= 0.3, (est, e_near, e_far)
    assert abs(e_far - E_s) < 0.15 and e_near < 0.3


def test_example_runs_tiny(tmp_path, capsys):
    import runpy
    argv = sys.argv
    sys.argv = ["pixels_pipeline.py", "--n", "60", "--out", str(tmp_path), "--nside", "2", "--model", str(RELEASED_MODEL)]
    try:
        runpy.run_path(str(REPO / "examples" / "pixels_pipeline.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert "stars/s" in capsys.readouterr().out
