"""photoinfer: data-driven stellar models (Green et al. 2021) and inference of stars from photometry."""
__version__ = "0.1.0"
