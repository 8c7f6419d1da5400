"""Shared fixtures: where the released Green et al. (2020) files are.

The released files are not part of the repository.  They are looked for in
``$PHOTOINFER_GREEN2020_DIR`` or else ``<repo>/../shared/data/green2020``; tests that need
them are skipped when they are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: METHOD §2 check value: θ = (5780, 4.44, 0.0), E = 1 gives A(M + R) =
CHECK_THETA = np.array([5780.0, 4.44, 0.0])
CHECK_Y = np.array([7.2703, 1.1075, -1.1918, 1.5101, 0.0518, -0.7712, -1.2629, -1.5788, -2.9126,
                    -3.5782, -3.8257, -1.3119, -0.6578])


def _green2020_dir() -> Path:
    env = os.environ.get("PHOTOINFER_GREEN2020_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "green2020"


@pytest.fixture(scope="session")
def green2020_dir() -> Path:
    d = _green2020_dir()
    if not (d / "green2020_nn_model.h5").exists():
        pytest.skip(f"released Green et al. files not found in {d} (set PHOTOINFER_GREEN2020_DIR)")
    return d


@pytest.fixture(scope="session")
def released_h5(green2020_dir) -> Path:
    """Path of the released Keras HDF5 model (read-only; never copied into the repository)."""
    return green2020_dir / "green2020_nn_model.h5"
