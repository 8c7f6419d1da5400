"""Keras/TensorFlow interoperability: load the released model in Keras, export photoinfer models to Keras.

TensorFlow is an optional extra (``pip install "photoinfer[tensorflow]"``); it is imported only
inside the functions of this module, so importing :mod:`photoinfer.io.keras` never needs it.
Keras 2 via ``tf_keras`` is preferred (it reads the released TF 2.2 / keras 2.2.4-tf file as is);
``keras`` (Keras 3, or Keras 2 in TF < 2.16) is the fallback.

The Keras architecture (Green et al. 2021, released code)::

    inputs   theta (3,)  standardized features x = (θ − θ_med)/θ_std
             E (1,)      reddening
             LT (B, B)   whitening matrix (identity for plain predictions)
    stellar_model_hidden_1 = Dense(H, sigmoid, L2 1e-4)(theta)
    stellar_model_hidden_2 = Dense(H, sigmoid, L2 1e-4)(hidden_1)
    BM  = Dense(B, linear)(hidden_2)                      A·M(θ)
    R   = Dense(B, exponential, L1 1e-2 on kernel)(theta)  R(θ)
    A   = Multiply()([E, R])                              E·R(θ)
    BA  = Dense(B, no bias, frozen, kernel Aᵀ)(A)         E·A R(θ)
    output LT_B_M_plus_A = Dot(axes=(2, 1))([LT, BM + BA])   LT·(A M + E·A R)

Layer and input names are those of the released file, so a model written by :func:`save_keras`
is read back by :func:`load_keras_model` and by photoinfer's h5py importer
(:func:`photoinfer.io.models.load_model`) alike.  :func:`save_keras` also stores θ_med, θ_std,
the band set and the provenance as root attributes ``photoinfer_*`` of the HDF5 file, which the
h5py importer prefers over the released defaults.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..conventions import DEFAULT_BANDS, BandSet, colour_matrix
from ..model import StellarModel
from .models import _KERAS_LAYERS

__all__ = ["import_keras", "load_keras_model", "keras_to_stellar_model", "to_keras", "save_keras",
           "keras_predict"]

_INSTALL_HINT = ('TensorFlow/Keras is needed for photoinfer.io.keras; install the optional extra with '
                 '`pip install "photoinfer[tensorflow]"` (tensorflow and tf-keras)')

#: Attribute names written at the root of a Keras HDF5 file by :func:`save_keras`.
ATTR_THETA_MED = "photoinfer_theta_med"
ATTR_THETA_STD = "photoinfer_theta_std"
ATTR_BANDS = "photoinfer_bands"
ATTR_PROVENANCE = "photoinfer_provenance"


def import_keras():
    """The Keras module: ``tf_keras`` (Keras 2) when installed, else ``keras``.

    ``$PHOTOINFER_KERAS=keras`` forces ``keras`` (Keras 3 with TF >= 2.16) even where tf_keras
    is installed; ``tf_keras`` forces tf_keras.

    Raises
    ------
    ImportError
        Naming the ``tensorflow`` extra, when neither TensorFlow nor Keras can be imported.
    """
    choice = os.environ.get("PHOTOINFER_KERAS", "").strip().lower()
    if choice not in ("", "keras", "tf_keras"):
        raise ValueError(f"PHOTOINFER_KERAS={choice!r}: use 'tf_keras' or 'keras'")
    if choice != "keras":
        try:
            import tf_keras as keras  # Keras 2 on TF >= 2.16
            return keras
        except ImportError as e:
            if choice == "tf_keras":
                raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    try:
        import tensorflow as tf  # noqa: F401  (Keras needs a backend; TF is the one we support)
        import keras
        return keras
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e


def _is_keras3(keras) -> bool:
    return int(str(keras.__version__).split(".")[0]) >= 3


def load_keras_model(path: str | os.PathLike):
    """Load a Keras HDF5 stellar model (the released file, or one written by :func:`save_keras`).

    The file is read by Keras itself (``compile=False``: the training configuration of the
    released file, whose loss is the authors' custom function, is not needed).

    Returns
    -------
    keras.Model
    """
    keras = import_keras()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Keras model file {path} does not exist")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises a variety of types for files it cannot read
        raise ValueError(f"{path}: Keras could not load it as a model: {type(e).__name__}: {e}") from e


def keras_to_stellar_model(keras_model, theta_med=None, theta_std=None, bands: BandSet = DEFAULT_BANDS,
                           provenance: dict | None = None) -> StellarModel:
    """Convert a Keras stellar model (the Green et al. architecture) to a :class:`StellarModel`.

    Parameters
    ----------
    keras_model : keras.Model
        With Dense layers ``stellar_model_hidden_1``, ``stellar_model_hidden_2``, ``BM``, ``R``
        (and the frozen ``BA``, checked to be Aᵀ when present).
    theta_med, theta_std : array, shape (3,), optional
        θ standardization [K, dex, dex]; default: the released values.
    bands : BandSet
        Band set, reference first; its length must match the model's outputs.
    provenance : dict, optional
        Stored on the model; default says the model came from Keras.
    """
    import jax.numpy as jnp

    from .models import RELEASED_THETA_MED, RELEASED_THETA_STD

    params = {}
    for ours, name in _KERAS_LAYERS.items():
        try:
            layer = keras_model.get_layer(name)
        except ValueError:
            raise ValueError(f"Keras model {keras_model.name!r} lacks the layer {name!r} of the "
                             "Green et al. architecture") from None
        kernel, bias = layer.get_weights()
        params[ours] = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    n_out = params["BM"]["kernel"].shape[1]
    if n_out != len(bands):
        raise ValueError(f"the Keras model has {n_out} bands, the band set {len(bands)}")
    try:
        (ba,) = keras_model.get_layer("BA").get_weights()
    except ValueError:
        ba = None
    if ba is not None and not np.allclose(ba, colour_matrix(n_out).T):
        raise ValueError("the Keras model's frozen BA layer is not the colour matrix Aᵀ of METHOD §2")
    med = RELEASED_THETA_MED if theta_med is None else np.asarray(theta_med, np.float64)
    std = RELEASED_THETA_STD if theta_std is None else np.asarray(theta_std, np.float64)
    prov = {"source": f"Keras model {keras_model.name}"} if provenance is None else dict(provenance)
    return StellarModel(params=params, theta_med=med, theta_std=std, bands=bands, provenance=prov)


def to_keras(model: StellarModel, name: str = "green2020_stellar_photometry_model",
             l2_hidden: float = 1e-4, l1_extinction: float = 1e-2):
    """Build the Green et al. Keras model with ``model``'s weights (see the module docstring).

    Parameters
    ----------
    model : StellarModel
    name : str
        Keras model name.
    l2_hidden, l1_extinction : float
        Regularization of METHOD §2 (L2 on the hidden kernels, L1 on the R kernel), attached
        as kernel regularizers so that training the Keras model reproduces the released loss.

    Returns
    -------
    keras.Model
        Inputs ``[theta, E, LT]`` (standardized θ (N, 3), E (N, 1), LT (N, B, B)); output
        LT·(A·M + E·A R), shape (N, B).
    """
    keras = import_keras()
    L = keras.layers
    p = {k: {kk: np.asarray(v, np.float32) for kk, v in layer.items()} for k, layer in model.params.items()}
    n_hidden = p["hidden_1"]["kernel"].shape[1]
    B = p["BM"]["kernel"].shape[1]
    if B != model.n_bands:
        raise ValueError(f"the model's network has {B} outputs, its band set {model.n_bands}")

    theta = keras.Input(shape=(3,), name="theta")
    E = keras.Input(shape=(1,), name="E")
    LT = keras.Input(shape=(B, B), name="LT")
    l2 = keras.regularizers.L1L2(l1=0.0, l2=l2_hidden)
    h = L.Dense(n_hidden, activation="sigmoid", kernel_regularizer=l2, name="stellar_model_hidden_1")(theta)
    h = L.Dense(n_hidden, activation="sigmoid", kernel_regularizer=keras.regularizers.L1L2(l1=0.0, l2=l2_hidden),
                name="stellar_model_hidden_2")(h)
    bm = L.Dense(B, activation="linear", name="BM")(h)
    r = L.Dense(B, activation="exponential", kernel_regularizer=keras.regularizers.L1L2(l1=l1_extinction, l2=0.0),
                name="R")(theta)
    a = L.Multiply(name="A")([E, r])
    ba_layer = L.Dense(B, use_bias=False, trainable=False, name="BA")
    ba = ba_layer(a)
    y = L.Add(name="B_M_plus_A")([bm, ba])
    out = L.Dot(axes=(2, 1), name="LT_B_M_plus_A")([LT, y])
    km = keras.Model(inputs=[theta, E, LT], outputs=out, name=name)

    for ours, kname in _KERAS_LAYERS.items():
        km.get_layer(kname).set_weights([p[ours]["kernel"], p[ours]["bias"]])
    ba_layer.set_weights([colour_matrix(B).T.astype(np.float32)])
    return km


def keras_predict(keras_model, model: StellarModel, theta, E=0.0, LT=None, batch_size: int = 4096) -> np.ndarray:
    """Run a Keras stellar model on physical θ: standardize with ``model``, LT = identity by default.

    Returns
    -------
    ndarray, shape (N, B), float32: LT·(A M(θ) + E·A R(θ)) [mag]
    """
    theta = np.atleast_2d(np.asarray(theta, np.float64))
    n = len(theta)
    B = model.n_bands
    x = ((theta - model.theta_med) / model.theta_std).astype(np.float32)
    E = np.broadcast_to(np.asarray(E, np.float32), (n,)).reshape(n, 1)
    if LT is None:
        LT = np.broadcast_to(np.eye(B, dtype=np.float32), (n, B, B))
    LT = np.ascontiguousarray(np.broadcast_to(np.asarray(LT, np.float32), (n, B, B)))
    return np.asarray(keras_model.predict([x, np.ascontiguousarray(E), LT], batch_size=batch_size, verbose=0))


def save_keras(model: StellarModel, path: str | os.PathLike, **to_keras_kwargs) -> Path:
    """Write ``model`` as a Keras HDF5 file (legacy ``.h5`` full-model format).

    The file is read back by :func:`load_keras_model` (Keras) and by
    :func:`photoinfer.io.models.load_model` (h5py); θ_med, θ_std, the band set and the provenance
    are stored as root attributes ``photoinfer_*`` so the h5py path recovers the whole model
    (the region-of-validity grid is not stored: use :func:`photoinfer.io.models.save_model` for that).
    """
    import h5py

    keras = import_keras()
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5"):
        raise ValueError(f"{path}: a Keras HDF5 file needs a .h5 or .hdf5 suffix")
    km = to_keras(model, **to_keras_kwargs)
    tmp = path.with_name(path.name + ".tmp.h5")
    if _is_keras3(keras):
        km.save(str(tmp))  # .h5 suffix selects the legacy HDF5 format
    else:
        km.save(str(tmp), save_format="h5", include_optimizer=False)
    with h5py.File(tmp, "r+") as f:
        f.attrs[ATTR_THETA_MED] = np.asarray(model.theta_med, np.float64)
        f.attrs[ATTR_THETA_STD] = np.asarray(model.theta_std, np.float64)
        f.attrs[ATTR_BANDS] = json.dumps(model.bands.to_dict())
        f.attrs[ATTR_PROVENANCE] = json.dumps(model.provenance, default=str)
    os.replace(tmp, path)
    return path
