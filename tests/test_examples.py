"""Every example runs at tiny size."""
import runpy
import sys
from pathlib import Path

import pytest

from conftest import RELEASED_MODEL, SAMPLE_8K

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args):
    sys_argv = sys.argv
    sys.argv = [name, *map(str, args)]
    try:
        return runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = sys_argv


def test_evaluate_released_model(released_model, sample_8k, capsys):
    run_example("evaluate_released_model.py", "--model", RELEASED_MODEL, "--catalog", SAMPLE_8K, "--n", 300)
    out = capsys.readouterr().out
    assert "before the reddening update" in out and "after the reddening update" in out
