"""HEALPix assignment, batch packing, seeds, (μ, E) images and their storage."""
import healpy as hp
import numpy as np
import pytest

from conftest import seed
from photoinfer.pixels import (NO_PIXEL, ORDER_MAX, Segment, batch_seed, healpix29, pixel_at_order, pixel_index,
                               plan_units, stars_by_pixel)
from photoinfer.sightline import (ImageGrid, dequantize, images_from_draws, locate_step, median_profile, quantize,
                                  stack_images)


def test_pixel_index_matches_healpy(rng):
    n = 5000
    l = rng.uniform(0, 360, n)
    b = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n)))
    l[:7] = np.nan
    b[7:9] = np.inf
    for nside in (1, 8, 64, 1024):
        pix = pixel_index(l, b, nside)
        ok = np.isfinite(l) & np.isfinite(b)
        assert np.all(pix[~ok] == NO_PIXEL)
        theta, phi = np.deg2rad(90 - b[ok]), np.deg2rad(l[ok])
        assert np.array_equal(pix[ok], hp.ang2pix(nside, theta, phi, nest=True))
    h29 = healpix29(l, b)
    assert np.array_equal(pixel_at_order(h29, ORDER_MAX, 6), pixel_index(l, b, 64))
    with pytest.raises(ValueError, match="power of two"):
        pixel_index(l, b, 3)


def test_stars_by_pixel_stable():
    pix = np.array([3, -1, 3, 0, 3, -1])
    d = stars_by_pixel(pix)
    assert list(d) == [-1, 0, 3]
    assert d[3].tolist() == [0, 2, 4] and d[-1].tolist() == [1, 5]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_plan_covers_every_star_once_and_keeps_pixels_apart(rng, batch_size):
    counts = {int(p): int(c) for p, c in zip(rng.choice(3000, 200, replace=False), rng.geometric(0.05, 200))}
    counts[NO_PIXEL] = 11
    counts[5000] = 2 * batch_size           # exactly whole batches
    units = plan_units(counts, batch_size)
    seen = {p: np.zeros(n, int) for p, n in counts.items()}
    unit_of = {}
    for u in units:
        for p in u.pixels:
            assert p not in unit_of, "a pixel in two units"
            unit_of[p] = u
        for batch in u.batches:
            assert 1 <= sum(len(s) for s in batch) <= batch_size
            assert len({s.pixel for s in batch}) == len(batch), "a pixel twice in one batch"
            for s in batch:
                assert s.pixel in u.pixels
                seen[s.pixel][s.start:s.stop] += 1
    assert all(np.all(v == 1) for v in seen.values())
    assert set(unit_of) == set(counts)
    assert unit_of[NO_PIXEL].pixels == (NO_PIXEL,)
    assert all(s.pixel == NO_PIXEL for b in unit_of[NO_PIXEL].batches for s in b)
    # shared batches are well filled: all but the last unit's shared batch hold > batch_size - max remainder
    n_batches = sum(len(u.batches) for u in units)
    assert n_batches <= sum(counts.values()) / batch_size * 2 + len(units)


def test_plan_is_independent_of_dict_order():
    counts = {5: 3, 1: 10, 9: 4, 2: 1}
    a = plan_units(counts, 8)
    b = plan_units(dict(reversed(list(counts.items()))), 8)
    assert a == b


def test_batch_seed_deterministic_and_distinct():
    s = [batch_seed(seed(), Segment(p, k, k + 1)) for p in range(-1, 50) for k in (0, 64)]
    assert len(set(s)) == len(s)
    assert s[0] == batch_seed(seed(), Segment(-1, 0, 5))
    assert batch_seed(1, Segment(3, 0, 1)) != batch_seed(2, Segment(3, 0, 1))


def test_images_from_draws_normalized_and_centred(rng):
    g = ImageGrid()
    n, S = 5, 4000
    mu0, E0 = rng.uniform(6, 16, n), rng.uniform(0.2, 3, n)
    mu = mu0 + 0.3 * rng.normal(size=(S, n))
    E = np.abs(E0 + 0.05 * rng.normal(size=(S, n)))
    mu[:, -1] = 30.0                      # off the grid
    img, frac = images_from_draws(mu, E, g)
    assert img.shape == (n, 120, 700)
    np.testing.assert_allclose(img[:-1].sum(axis=(1, 2)) * g.d_mu * g.d_E, 1.0, rtol=1e-5)
    assert np.all(img[-1] == 0) and frac[-1] == 1.0
    # mean of the image within 4 standard errors (+ half a bin) of the truth
    m = (img[:-1] * g.mu_centers[None, :, None]).sum(axis=(1, 2)) * g.d_mu * g.d_E
    assert np.all(np.abs(m - mu0[:-1]) < 4 * 0.3 / np.sqrt(S) + g.d_mu / 2)


def test_quantize_roundtrip(rng):
    img = rng.gamma(1.0, size=(4, 120, 70)).astype(np.float32)
    img[2] = 0
    q, scale = quantize(img)
    assert q.dtype == np.uint8 and scale[2] == 0
    err = np.abs(dequantize(q, scale) - img)
    assert np.all(err <= scale[:, None, None] / 255 / 2 * (1 + 1e-5))
    q16, s16 = quantize(img, 16)
    assert np.abs(dequantize(q16, s16) - img).max() <= s16.max() / 65535


def test_profile_and_step_find_a_screen(rng):
    g = ImageGrid()
    n = 400
    mu = rng.uniform(6, 16, n)
    E = np.where(mu < 10.5, 0.05, 1.2)
    img, _ = images_from_draws(mu + 0.1 * rng.normal(size=(200, n)), E + 0.03 * rng.normal(size=(200, n)), g)
    st = stack_images(img, g)
    assert abs(st.sum() - n) < 1e-3 * n
    prof = median_profile(st, g)
    near, far = g.mu_centers < 10.2, g.mu_centers > 10.8
    assert np.nanmax(np.abs(prof[near & np.isfinite(prof)] - 0.05)) < 0.03
    assert np.nanmax(np.abs(prof[far & np.isfinite(prof)] - 1.2)) < 0.03
    mu_s, e_near, e_far = locate_step(prof, st, g)
    assert abs(mu_s - 10.5) < 0.2 and abs(e_near - 0.05) < 0.03 and abs(e_far - 1.2) < 0.03
