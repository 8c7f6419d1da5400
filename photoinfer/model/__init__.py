"""The data-driven stellar model: the network (pure functions) and its container."""
from .network import (colour_basis_absolute, extinction_vector, init_params, predict_magnitudes,
                      predict_y, regularization, standardize, to_colour_basis)
from .stellar_model import StellarModel

__all__ = ["StellarModel", "init_params", "standardize", "colour_basis_absolute", "extinction_vector",
           "predict_y", "predict_magnitudes", "regularization", "to_colour_basis"]
