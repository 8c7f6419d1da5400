"""Model files: photoinfer's own format, import of the released Keras HDF5 file, the shipped default.

photoinfer model file (HDF5, ``format = "photoinfer-model"``, ``format_version = 1``)::

    attrs: format, format_version, bands (JSON list of Band dicts), provenance (JSON)
    theta_med (3,), theta_std (3,)
    params/<layer>/kernel (in, out), params/<layer>/bias (out,)
    validity/density (K, nT, nG, nF), validity/{teff,logg,feh}; attrs labels (JSON)   [optional]

The released Keras file (Green et al. 2021, Zenodo 10.5281/zenodo.3902382) is read with h5py
alone; its θ normalization is not inside it and is taken from the JSON file beside it
(``green2020_theta_normalization.json``) or, failing that, the released values.  A Keras file
written by :func:`photoinfer.io.keras.save_keras` (Keras 2 names weights ``kernel:0``, Keras 3
``kernel``; both are read) carries root attributes ``photoinfer_theta_med``,
``photoinfer_theta_std`` (3,), ``photoinfer_bands`` and ``photoinfer_provenance`` (JSON), which
take precedence.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from importlib import resources
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np

from ..conventions import DEFAULT_BANDS, BandSet
from ..model import StellarModel
from ..model.stellar_model import ValidityGrid

__all__ = ["load_model", "save_model", "import_released_keras", "default_model_path", "fetch_released_model",
           "RELEASED_THETA_MED", "RELEASED_THETA_STD", "FORMAT_VERSION"]

FORMAT = "photoinfer-model"
FORMAT_VERSION = 1
RELEASED_THETA_MED = np.array([5372.01611328125, 4.066964149475098, -0.24608156085014343])
RELEASED_THETA_STD = np.array([902.8016357421875, 0.8892691731452942, 0.3739211857318878])
_KERAS_LAYERS = {"hidden_1": "stellar_model_hidden_1", "hidden_2": "stellar_model_hidden_2", "BM": "BM", "R": "R"}

#: The released model on Zenodo and its checksum (the file is the authors' Keras HDF5 model).
RELEASED_MODEL_URL = "https://zenodo.org/records/3902382/files/green2020_nn_model.h5?download=1"
RELEASED_MODEL_SHA256 = "03fea751ac4b271bc4c61cfb5ecac3eea74cd3666ceeb9fe842a17ae5c7e3be8"


def default_model_path() -> Path:
    """Path of the model shipped in ``photoinfer/data`` (trained by photoinfer; see data/README.md)."""
    name = "photoinfer_default_model.h5"
    try:  # installed: data/ is shipped as the package photoinfer.data
        return Path(str(resources.files("photoinfer.data").joinpath(name)))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH: data/ beside photoinfer/
        return Path(__file__).resolve().parents[2] / "data" / name


def _is_keras(f: h5py.File) -> bool:
    return "model_weights" in f


def load_model(path: str | os.PathLike | None = None) -> StellarModel:
    """Load a stellar model.

    Parameters
    ----------
    path : str or path-like or None
        A photoinfer model file, the released Keras HDF5 file, ``"green2020"`` (the released
        model, downloaded once from Zenodo into the cache, see :func:`fetch_released_model`),
        or None for the shipped default model.

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, when it is missing or is not a model file.
    """
    if path is None:
        path = default_model_path()
    elif str(path) == "green2020":
        path = fetch_released_model()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not an HDF5 model file: {e}") from None
    with f:
        if _is_keras(f):
            return import_released_keras(path)
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is neither a photoinfer model file nor a Keras HDF5 model")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"{path} has model format version {version}; this photoinfer reads <= {FORMAT_VERSION}")
        params = {name: {k: jnp.asarray(g[k][()]) for k in ("kernel", "bias")} for name, g in f["params"].items()}
        validity = None
        if "validity" in f:
            v = f["validity"]
            validity = ValidityGrid(v["density"][()], v["teff"][()], v["logg"][()], v["feh"][()],
                                    tuple(json.loads(v.attrs["labels"])))
        return StellarModel(params=params, theta_med=np.asarray(f["theta_med"][()]),
                            theta_std=np.asarray(f["theta_std"][()]),
                            bands=BandSet.from_dict(json.loads(f.attrs["bands"])),
                            provenance=json.loads(f.attrs["provenance"]), validity=validity)


def save_model(model: StellarModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` in photoinfer's format, atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["bands"] = json.dumps(model.bands.to_dict())
        f.attrs["provenance"] = json.dumps(model.provenance, default=str)
        f["theta_med"] = np.asarray(model.theta_med, np.float64)
        f["theta_std"] = np.asarray(model.theta_std, np.float64)
        for name, layer in model.params.items():
            for k, v in layer.items():
                f[f"params/{name}/{k}"] = np.asarray(v, np.float32)
        if model.validity is not None:
            v = model.validity
            g = f.create_group("validity")
            g.create_dataset("density", data=np.asarray(v.density, np.float32), compression="gzip")
            for ax in ("teff", "logg", "feh"):
                g[ax] = np.asarray(getattr(v, ax), np.float64)
            g.attrs["labels"] = json.dumps(list(v.labels))
    os.replace(tmp, path)
    return path


def _released_normalization(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    side = path.with_name("green2020_theta_normalization.json")
    if side.exists():
        d = json.loads(side.read_text())
        return np.asarray(d["theta_med"]), np.asarray(d["theta_std"]), str(side)
    return RELEASED_THETA_MED, RELEASED_THETA_STD, "released values (METHOD §1)"


def _released_validity(path: Path) -> ValidityGrid | None:
    side = path.with_name("green2020_input_density.h5")
    if not side.exists():
        return None
    with h5py.File(side, "r") as f:
        d = f["rho_stars"]
        rho = d[()].astype(np.float32)
        peak = rho.reshape(len(rho), -1).max(axis=1)
        rho = rho / np.where(peak > 0, peak, 1.0)[:, None, None, None]
        return ValidityGrid(rho, d.attrs["teff"], d.attrs["logg"], d.attrs["feh"],
                            tuple(str(s) for s in d.attrs["bands"]))


def import_released_keras(path: str | os.PathLike, bands: BandSet = DEFAULT_BANDS) -> StellarModel:
    """Read the authors' Keras HDF5 model (or one written by ``save_keras``) with h5py alone.

    The θ normalization is read from ``green2020_theta_normalization.json`` beside the file when
    present, and the region-of-validity grid from ``green2020_input_density.h5`` likewise.  A file
    written by :func:`photoinfer.io.keras.save_keras` carries its own θ normalization, band set
    (overriding ``bands``) and provenance as ``photoinfer_*`` root attributes.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        w = f["model_weights"]
        params = {ours: {k: jnp.asarray(_keras_weight(w, layer, k, path)) for k in ("kernel", "bias")}
                  for ours, layer in _KERAS_LAYERS.items()}
        keras_version = _attr_str(f.attrs.get("keras_version", b""))
        ours = {k: f.attrs[k] for k in ("photoinfer_theta_med", "photoinfer_theta_std", "photoinfer_bands",
                                         "photoinfer_provenance") if k in f.attrs}
    if "photoinfer_bands" in ours:
        bands = BandSet.from_dict(json.loads(_attr_str(ours["photoinfer_bands"])))
    n_out = params["BM"]["kernel"].shape[1]
    if n_out != len(bands):
        raise ValueError(f"{path}: the model has {n_out} bands, the band set {len(bands)}")
    if "photoinfer_theta_med" in ours and "photoinfer_theta_std" in ours:
        # written by photoinfer.io.keras.save_keras: the whole model is in the file
        med = np.asarray(ours["photoinfer_theta_med"], np.float64)
        std = np.asarray(ours["photoinfer_theta_std"], np.float64)
        prov = json.loads(_attr_str(ours.get("photoinfer_provenance", "{}")))
        return StellarModel(params=params, theta_med=med, theta_std=std, bands=bands, provenance=prov)
    med, std, norm_src = _released_normalization(path)
    return StellarModel(params=params, theta_med=med, theta_std=std, bands=bands,
                        provenance={"source": "Green et al. 2021 released Keras model", "file": str(path),
                                    "keras_version": keras_version,
                                    "theta_normalization": norm_src, "doi": "10.5281/zenodo.3902382"},
                        validity=_released_validity(path))


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _keras_weight(w: h5py.Group, layer: str, name: str, path: Path) -> np.ndarray:
    """``model_weights/<layer>/<layer>/<name>``: ``kernel:0`` (Keras 2) or ``kernel`` (Keras 3)."""
    for key in (f"{layer}/{layer}/{name}:0", f"{layer}/{layer}/{name}"):
        if key in w:
            return w[key][()]
    raise ValueError(f"{path}: Keras file lacks the weight {layer}/{name} of the Green et al. architecture")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where downloaded files live: ``$PHOTOINFER_CACHE`` or ``~/.cache/photoinfer``."""
    return Path(os.environ.get("PHOTOINFER_CACHE", Path.home() / ".cache" / "photoinfer"))


def fetch_released_model(url: str | None = None, sha256: str | None = None) -> Path:
    """Download the released model from Zenodo once, check its SHA-256, and return its cached path.

    Parameters
    ----------
    url : str, optional
        Where to fetch from; default ``$PHOTOINFER_GREEN2020_URL`` or :data:`RELEASED_MODEL_URL`.
        ``file://`` URLs work (used by the tests and by mirrors).
    sha256 : str, optional
        Expected checksum; default :data:`RELEASED_MODEL_SHA256`.
    """
    url = url or os.environ.get("PHOTOINFER_GREEN2020_URL", RELEASED_MODEL_URL)
    sha256 = sha256 or RELEASED_MODEL_SHA256
    target = cache_dir() / "green2020" / "green2020_nn_model.h5"
    if target.exists() and _sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
    except OSError as e:
        raise RuntimeError(f"could not download the released model from {url}: {e}. "
                           "Download it by hand from https://doi.org/10.5281/zenodo.3902382 and pass its path.") from e
    got = _sha256(tmp)
    if got != sha256:
        tmp.unlink()
        raise RuntimeError(f"{url}: checksum {got} does not match the released model's {sha256}")
    os.replace(tmp, target)
    (target.parent / "green2020_theta_normalization.json").write_text(json.dumps(
        {"theta_med": RELEASED_THETA_MED.tolist(), "theta_std": RELEASED_THETA_STD.tolist()}))
    return target
