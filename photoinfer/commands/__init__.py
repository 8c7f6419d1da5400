"""One module per ``photoinfer`` subcommand; shared argument helpers here."""
from __future__ import annotations

import json
import logging

import numpy as np

log = logging.getLogger("photoinfer")


def add_model_argument(parser) -> None:
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="stellar model: a photoinfer model file, the released Keras .h5 file, or 'green2020' "
                             "(the released model, downloaded once from Zenodo). Default: the model shipped "
                             "with photoinfer.")


def load_model_arg(args):
    """Load ``args.model`` (None → shipped default), saying which."""
    from ..io.models import default_model_path, load_model
    model = load_model(args.model)
    log.info("model: %s (%d bands: %s)", args.model or default_model_path(), model.n_bands, " ".join(model.bands.names))
    return model


def print_json(obj) -> None:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    print(json.dumps(obj, indent=2, default=default))
