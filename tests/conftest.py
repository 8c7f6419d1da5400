"""Shared fixtures: paths to ../shared (the released model and 8k sample), seeds."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHOTOINFER_SHARED", REPO.parent / "shared"))
GREEN2020 = Path(os.environ.get("PHOTOINFER_GREEN2020_DIR", SHARED / "data" / "green2020"))
RELEASED_MODEL = GREEN2020 / "green2020_nn_model.h5"
SAMPLE_8K = GREEN2020 / "green2020_sample_8k.h5"
#: METHOD §2 check vector: A(M + R) at θ = (5780, 4.44, 0.0), E = 1.
CHECK_THETA = np.array([5780.0, 4.44, 0.0])
CHECK_VECTOR = CHECK_Y = np.array([7.2703, 1.1075, -1.1918, 1.5101, 0.0518, -0.7712, -1.2629, -1.5788, -2.9126,
                                   -3.5782, -3.8257, -1.3119, -0.6578])


def seed() -> int:
    """Test seed; override with PHOTOINFER_TEST_SEED to check a result is not tuned to one seed."""
    return int(os.environ.get("PHOTOINFER_TEST_SEED", "20210"))


@pytest.fixture(scope="session")
def released_model():
    if not RELEASED_MODEL.exists():
        pytest.skip(f"released model not found at {RELEASED_MODEL} (../shared missing)")
    from photoinfer.io.models import load_model
    return load_model(RELEASED_MODEL)


@pytest.fixture(scope="session")
def sample_8k():
    if not SAMPLE_8K.exists():
        pytest.skip(f"real sample not found at {SAMPLE_8K} (../shared missing)")
    from photoinfer.io.catalogs import read_catalog
    return read_catalog(SAMPLE_8K)


@pytest.fixture
def rng():
    return np.random.default_rng(seed())


@pytest.fixture(scope="session")
def green2020_dir() -> Path:
    if not RELEASED_MODEL.exists():
        pytest.skip(f"released Green et al. files not found in {GREEN2020} (set PHOTOINFER_GREEN2020_DIR)")
    return GREEN2020


@pytest.fixture(scope="session")
def released_h5(green2020_dir) -> Path:
    """Path of the released Keras HDF5 model (read-only; never copied into the repository)."""
    return RELEASED_MODEL


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop JAX's compiled executables after each test module (``jax.clear_caches``; later modules reload theirs from
    the persistent cache).  The whole suite in one process compiles thousands of executables, each with its own
    memory maps: ~200 tests in, XLA crashed compiling or serializing (segfault, abort) at the first test past the
    kernel's limit on maps per process (``vm.max_map_count`` 65,530 here)."""
    yield
    import jax
    jax.clear_caches()


def pytest_configure(config):
    """A persistent JAX compilation cache for this session, its subprocesses and Dask workers.

    In ``.pytest_cache/d/jax-compilation-cache`` (every entry kept), so a pipeline restarted in a
    subprocess loads what the test process compiled instead of compiling again.  Compiled code is
    the same either way.  ``PHOTOINFER_TEST_JAX_CACHE=0`` turns it off; an explicit
    ``JAX_COMPILATION_CACHE_DIR`` wins.
    """
    cache = getattr(config, "cache", None)
    if os.environ.get("PHOTOINFER_TEST_JAX_CACHE", "1") == "0" or cache is None:
        return
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache.mkdir("jax-compilation-cache")))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
