"""Every file read and write: catalogs, models, posteriors."""
from .models import load_model, save_model

__all__ = ["load_model", "save_model"]
