"""Brute-force grid posteriors (the brutus / Bayestar19 method): a θ grid with (μ, E) in closed form.

- :mod:`.engine`: the θ grid, the (μ, E) least squares as matrix products, Laplace weights, NUTS seeds.
- :mod:`.posterior`: the exact posterior by importance sampling (grid points drawn from the Laplace
  weights, μ drawn per point, E integrated analytically), draws, images, :func:`grid_fit`.
"""
from .engine import (PRESETS, GridResult, InitialPoints, MuESolution, StarArrays, ThetaGrid, initial_points,
                     make_theta_grid, solve_mu_E, solve_mu_E_direct, star_arrays)

__all__ = ["PRESETS", "GridResult", "InitialPoints", "MuESolution", "StarArrays", "ThetaGrid", "initial_points",
           "make_theta_grid", "solve_mu_E", "solve_mu_E_direct", "star_arrays"]
