"""Posteriors of photometry-only stars (METHOD §8): the numpyro model and the batched per-star NUTS sampler.

The only subpackage that imports numpyro (and blackjax).
"""
