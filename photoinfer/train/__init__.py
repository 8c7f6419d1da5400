"""Training a stellar model (METHOD §5): :func:`train` returns a model and its history, writes nothing."""
from .loop import History, TrainConfig, TrainState, batch_loss, make_optimizer, train
from .schedule import cut_threshold, learning_rate, split_labels

__all__ = ["train", "TrainConfig", "TrainState", "History", "batch_loss", "make_optimizer", "cut_threshold",
           "learning_rate", "split_labels"]
