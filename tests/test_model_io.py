"""Model files: photoinfer's own format, the released Keras file read with h5py, the Zenodo path."""
from __future__ import annotations

import shutil

import h5py
import jax
import numpy as np
import pytest

from photoinfer.conventions import band_set
from photoinfer.io.models import (RELEASED_MODEL_SHA256, fetch_released_model, load_model, save_model)
from photoinfer.model import StellarModel, init_params
from photoinfer.model.stellar_model import ValidityGrid

from conftest import CHECK_THETA, CHECK_Y


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("PHOTOINFER_CACHE", str(d))
    monkeypatch.delenv("PHOTOINFER_GREEN2020_URL", raising=False)
    return d


@pytest.fixture
def released_url(released_h5, tmp_path):
    """A file:// URL to a lone copy of the released model (no side files beside it)."""
    src = tmp_path / "mirror" / "green2020_nn_model.h5"
    src.parent.mkdir()
    shutil.copyfile(released_h5, src)
    return "file://" + str(src)


def _check_vector(model):
    return np.asarray(model.predict_y(CHECK_THETA, 1.0))


# --- the released file, read with h5py ------------------------------------------------------

def test_released_check_vector(released_h5):
    m = load_model(released_h5)
    assert m.n_bands == 13
    np.testing.assert_allclose(_check_vector(m), CHECK_Y, atol=1e-4)
    assert m.validity is not None and m.validity.density.shape == (13, 50, 50, 50)


# --- Zenodo path (file:// URL stands in for Zenodo) ------------------------------------------

def test_fetch_downloads_verifies_and_caches(cache, released_url):
    path = fetch_released_model(url=released_url)
    assert path.parent == cache / "green2020"
    assert path.exists()
    assert (path.parent / "green2020_theta_normalization.json").exists()
    # cached: a second call does not touch the URL
    assert fetch_released_model(url="file:///nonexistent/green2020_nn_model.h5") == path
    np.testing.assert_allclose(_check_vector(load_model(path)), CHECK_Y, atol=1e-4)


def test_fetch_wrong_checksum(cache, released_url):
    with pytest.raises(RuntimeError, match="checksum"):
        fetch_released_model(url=released_url, sha256="0" * 64)
    target = cache / "green2020" / "green2020_nn_model.h5"
    assert not target.exists()
    assert not target.with_name(target.name + ".part").exists()


def test_fetch_unreachable(cache, tmp_path):
    with pytest.raises(RuntimeError, match="could not download"):
        fetch_released_model(url="file://" + str(tmp_path / "nowhere.h5"))


def test_load_by_name_uses_env_url(cache, released_url, monkeypatch):
    monkeypatch.setenv("PHOTOINFER_GREEN2020_URL", released_url)
    m = load_model("green2020")
    np.testing.assert_allclose(_check_vector(m), CHECK_Y, atol=1e-4)
    assert m.provenance["doi"] == "10.5281/zenodo.3902382"
    assert (cache / "green2020" / "green2020_nn_model.h5").exists()


def test_released_checksum_constant(released_h5):
    from photoinfer.io.models import _sha256
    assert _sha256(released_h5) == RELEASED_MODEL_SHA256


# --- photoinfer's own format -----------------------------------------------------------------

def _toy_model(n_bands=5, with_validity=True):
    bands = band_set(["G", "BP", "RP", "J", "Ks"][:n_bands])
    params = init_params(jax.random.PRNGKey(3), n_bands, n_hidden=8)
    rng = np.random.default_rng(0)
    params["R"]["bias"] = params["R"]["bias"] + 0.3  # non-zero biases survive too
    validity = None
    if with_validity:
        validity = ValidityGrid(rng.random((2, 4, 5, 6)).astype(np.float32), np.linspace(3000, 9000, 4),
                                np.linspace(-1, 6, 5), np.linspace(-2.5, 1, 6), ("parallax", "G"))
    return StellarModel(params=params, theta_med=np.array([5000.0, 4.0, -0.2]),
                        theta_std=np.array([900.0, 0.9, 0.4]), bands=bands,
                        provenance={"source": "unit test", "n": 3}, validity=validity)


@pytest.mark.parametrize("with_validity", [True, False])
def test_save_load_roundtrip(tmp_path, with_validity):
    m = _toy_model(with_validity=with_validity)
    path = save_model(m, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5.tmp").exists()
    back = load_model(path)
    assert back.bands == m.bands
    assert back.provenance == m.provenance
    np.testing.assert_array_equal(back.theta_med, m.theta_med)
    np.testing.assert_array_equal(back.theta_std, m.theta_std)
    assert set(back.params) == set(m.params)
    for name in m.params:
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(back.params[name][k]), np.asarray(m.params[name][k]))
    if with_validity:
        v, w = back.validity, m.validity
        np.testing.assert_array_equal(v.density, w.density)
        for ax in ("teff", "logg", "feh"):
            np.testing.assert_array_equal(getattr(v, ax), getattr(w, ax))
        assert v.labels == w.labels
    else:
        assert back.validity is None
    theta = np.array([[5500.0, 4.2, -0.1], [4500.0, 2.5, -0.8]])
    np.testing.assert_array_equal(np.asarray(back.predict_y(theta, 0.4)), np.asarray(m.predict_y(theta, 0.4)))


def test_released_to_own_format(released_h5, tmp_path):
    m = load_model(released_h5)
    back = load_model(save_model(m, tmp_path / "released_own.h5"))
    np.testing.assert_allclose(_check_vector(back), CHECK_Y, atol=1e-4)
    assert back.provenance["doi"] == "10.5281/zenodo.3902382"


# --- clear errors ----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    p = tmp_path / "absent.h5"
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        load_model(p)


def test_not_hdf5(tmp_path):
    p = tmp_path / "text.h5"
    p.write_text("not a model")
    with pytest.raises(ValueError, match="text.h5"):
        load_model(p)


def test_hdf5_but_not_a_model(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match="other.h5"):
        load_model(p)


def test_future_format_version(tmp_path):
    p = save_model(_toy_model(with_validity=False), tmp_path / "future.h5")
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ValueError, match="future.h5.*version 99"):
        load_model(p)


def test_keras_file_without_expected_layers(tmp_path):
    p = tmp_path / "otherkeras.h5"
    with h5py.File(p, "w") as f:
        f.create_group("model_weights/dense/dense")["kernel:0"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="otherkeras.h5"):
        load_model(p)
