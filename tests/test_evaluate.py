"""χ² of the released model on the real sample (METHOD §9)."""
import numpy as np
import pytest

from photoinfer.catalog import Flag
from photoinfer.evaluate import evaluate

#: METHOD §9, green2020_sample_8k.h5, computed independently.
REFERENCE = {False: {"sfd": 0.609, "b19": 0.985, "default": 3.038},
             True: {"sfd": 0.530, "b19": 0.843, "default": 3.280}}


@pytest.mark.parametrize("update", [False, True])
def test_chi2_per_band_by_r_source_matches_reference(released_model, sample_8k, update):
    s = evaluate(released_model, sample_8k, update=update).summary()
    assert s["n_stars"] == len(sample_8k) == s["n_used"]
    for src, ref in REFERENCE[update].items():
        assert s["by_r_source"][src]["chi2_per_band"] == pytest.approx(ref, abs=1.5e-3)


def test_reduced_chi2_distribution(released_model, sample_8k):
    """METHOD §9: per-star reduced χ² at the updated E with C₀: median 0.55, 2.5 % above 5 (here with C_y)."""
    ev = evaluate(released_model, sample_8k, update=True)
    red = ev.reduced_chi2[np.isfinite(ev.reduced_chi2)]
    assert 0.4 < np.median(red) < 0.7
    assert 0.01 < np.mean(red > 5) < 0.05


def test_every_star_keeps_its_row(released_model, sample_8k):
    cat = sample_8k.subset(np.arange(50))
    cat.mag[3, 0] = np.nan           # no reference band
    cat.theta_cov[7] = -np.eye(3)    # not positive-definite
    cat.validate()
    ev = evaluate(released_model, cat)
    assert len(ev.chi2) == 50 and np.all(ev.source_id == cat.source_id)
    assert np.isnan(ev.chi2[3]) and ev.flags[3] & Flag.NO_REFERENCE
    assert np.isnan(ev.chi2[7]) and ev.flags[7] & Flag.BAD_THETA
    assert np.isfinite(np.delete(ev.chi2, [3, 7])).all()
