"""Keras/TensorFlow interoperability (optional extra ``tensorflow``).

Tests marked ``tensorflow`` are skipped when TensorFlow is not installed.  Each runs with
tf_keras (Keras 2) and with Keras 3 where installed (``$PHOTOINFER_KERAS``).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from photoinfer.conventions import band_set, colour_matrix
from photoinfer.io import keras as pk
from photoinfer.io.models import load_model
from photoinfer.model import StellarModel, init_params, regularization
from photoinfer.model.network import n_parameters

from conftest import CHECK_THETA, CHECK_Y

TOL = 1e-5  # mag, float32


@pytest.fixture(params=["tf_keras", "keras"])
def keras(request, monkeypatch):
    """The Keras module under test; skipped without TensorFlow (or without that Keras flavour)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow")
    pytest.importorskip(request.param)
    monkeypatch.setenv("PHOTOINFER_KERAS", request.param)
    k = pk.import_keras()
    assert k.__name__ == request.param
    return k


def _sample_theta(n=1000, seed=0):
    """θ uniform in the training sample's range, and E ∈ [0, 3]."""
    rng = np.random.default_rng(seed)
    theta = np.stack([rng.uniform(3500, 8000, n), rng.uniform(0.5, 5, n), rng.uniform(-2, 0.5, n)], -1)
    return theta, rng.uniform(0, 3, n)


def _toy_model(seed=1, n_bands=5, n_hidden=8):
    params = init_params(jax.random.PRNGKey(seed), n_bands, n_hidden)
    rng = np.random.default_rng(seed)
    params = {k: {kk: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for kk, v in layer.items()}
              for k, layer in params.items()}
    # a realistic extinction layer (R ~ 0.1–3 mag per unit E, weakly θ-dependent), so that float32
    # rounding of y (|y| ≲ 10 mag) stays well below the 1e-5 mag tolerance
    params["R"] = {"kernel": 0.05 * params["R"]["kernel"],
                   "bias": np.log(rng.uniform(0.1, 3.0, n_bands)).astype(np.float32)}
    return StellarModel(params=params, theta_med=np.array([5100.0, 3.9, -0.3]),
                        theta_std=np.array([800.0, 1.0, 0.35]),
                        bands=band_set(["G", "BP", "RP", "J", "Ks"][:n_bands]), provenance={"source": "toy"})


def _assert_same_params(a, b):
    assert set(a) == set(b)
    for name in a:
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(a[name][k]), np.asarray(b[name][k]), err_msg=f"{name}/{k}")


# --- without TensorFlow ----------------------------------------------------------------------

def test_missing_tensorflow_message(monkeypatch):
    for mod in ("tf_keras", "tensorflow", "keras"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    monkeypatch.delenv("PHOTOINFER_KERAS", raising=False)
    with pytest.raises(ImportError, match=r'pip install "photoinfer\[tensorflow\]"'):
        pk.import_keras()
    with pytest.raises(ImportError, match="photoinfer"):
        pk.to_keras(_toy_model())


# --- the released model read by Keras itself --------------------------------------------------

@pytest.mark.tensorflow
def test_released_keras_vs_h5py(keras, released_h5):
    km = pk.load_keras_model(released_h5)
    ours = load_model(released_h5)
    theta, E = _sample_theta()
    y_keras = pk.keras_predict(km, ours, theta, E)
    y_ours = np.asarray(ours.predict_y(theta, E))
    diff = np.abs(y_keras - y_ours).max(axis=0)
    print(f"\n[{keras.__name__} {keras.__version__}] released model, Keras vs h5py import: "
          f"max |Δ| = {diff.max():.3g} mag (per band {np.array2string(diff, precision=2)})")
    assert diff.max() < TOL
    # the check vector of METHOD §2, through Keras
    np.testing.assert_allclose(pk.keras_predict(km, ours, CHECK_THETA, 1.0)[0], CHECK_Y, atol=1e-4)


@pytest.mark.tensorflow
def test_released_keras_whitened_output(keras, released_h5):
    """The LT input: output = LT·y for a non-identity LT."""
    km = pk.load_keras_model(released_h5)
    ours = load_model(released_h5)
    theta, E = _sample_theta(50, seed=2)
    LT = np.random.default_rng(3).standard_normal((50, 13, 13)).astype(np.float32) * 0.3
    y = np.asarray(ours.predict_y(theta, E))
    np.testing.assert_allclose(pk.keras_predict(km, ours, theta, E, LT=LT), np.einsum("nij,nj->ni", LT, y),
                               atol=5e-5)


@pytest.mark.tensorflow
def test_keras_to_stellar_model(keras, released_h5):
    ours = load_model(released_h5)
    conv = pk.keras_to_stellar_model(pk.load_keras_model(released_h5), ours.theta_med, ours.theta_std)
    _assert_same_params(conv.params, ours.params)
    assert conv.bands == ours.bands
    theta, E = _sample_theta(100)
    np.testing.assert_array_equal(np.asarray(conv.predict_y(theta, E)), np.asarray(ours.predict_y(theta, E)))


# --- export ------------------------------------------------------------------------------------

@pytest.mark.tensorflow
@pytest.mark.parametrize("which", ["released", "toy"])
def test_to_keras_predictions(keras, which, request):
    model = load_model(request.getfixturevalue("released_h5")) if which == "released" else _toy_model()
    km = pk.to_keras(model)
    theta, E = _sample_theta()
    y_keras = pk.keras_predict(km, model, theta, E)
    d = np.abs(y_keras - np.asarray(model.predict_y(theta, E))).max()
    print(f"\n[{keras.__name__}] to_keras({which}) vs photoinfer: max |Δ| = {d:.3g} mag")
    assert d < TOL
    # architecture: frozen BA = Aᵀ, trainable count = photoinfer's parameters
    ba = km.get_layer("BA")
    assert not ba.trainable
    np.testing.assert_array_equal(ba.get_weights()[0], colour_matrix(model.n_bands).T)
    n_trainable = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
    assert n_trainable == n_parameters(model.params)
    if which == "released":
        assert n_trainable == 1665
    # regularizers of METHOD §2 (L2 1e-4 hidden kernels, L1 1e-2 on the R kernel)
    keras_penalty = float(sum(np.asarray(l) for l in km.losses))
    np.testing.assert_allclose(keras_penalty, float(regularization(model.params)), rtol=1e-5)


@pytest.mark.tensorflow
@pytest.mark.parametrize("which", ["released", "toy"])
def test_save_keras_roundtrip(keras, which, request, tmp_path):
    model = load_model(request.getfixturevalue("released_h5")) if which == "released" else _toy_model()
    path = pk.save_keras(model, tmp_path / "exported.h5")
    assert not list(tmp_path.glob("*.tmp*"))
    # h5py import (no TensorFlow involved)
    back = load_model(path)
    _assert_same_params(back.params, model.params)
    np.testing.assert_array_equal(back.theta_med, model.theta_med)
    np.testing.assert_array_equal(back.theta_std, model.theta_std)
    assert back.bands == model.bands
    assert back.provenance == model.provenance
    # Keras reads it too, with the same predictions
    km = pk.load_keras_model(path)
    theta, E = _sample_theta(500, seed=5)
    d = np.abs(pk.keras_predict(km, back, theta, E) - np.asarray(model.predict_y(theta, E))).max()
    assert d < TOL
    conv = pk.keras_to_stellar_model(km, model.theta_med, model.theta_std, bands=model.bands)
    _assert_same_params(conv.params, model.params)


@pytest.mark.tensorflow
def test_save_keras_rejects_other_suffix(keras, tmp_path):
    with pytest.raises(ValueError, match=r"\.h5"):
        pk.save_keras(_toy_model(), tmp_path / "model.keras")


@pytest.mark.tensorflow
def test_load_keras_model_errors(keras, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        pk.load_keras_model(tmp_path / "absent.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="bad.h5"):
        pk.load_keras_model(bad)


@pytest.mark.tensorflow
def test_keras_to_stellar_model_wrong_architecture(keras):
    x = keras.Input(shape=(3,), name="theta")
    km = keras.Model(x, keras.layers.Dense(4, name="dense")(x))
    with pytest.raises(ValueError, match="stellar_model_hidden_1"):
        pk.keras_to_stellar_model(km)
