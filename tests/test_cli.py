"""The photoinfer command: predict, evaluate, info, and errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import CHECK_VECTOR, RELEASED_MODEL, SAMPLE_8K
from photoinfer.cli import main


def run(capsys, *args):
    rc = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_check_vector(capsys, released_model):
    rc, out, _ = run(capsys, "predict", "--model", RELEASED_MODEL, "--teff", 5780, "--logg", 4.44, "--feh", 0,
                     "--ebv", 1, "--json")
    assert rc == 0
    got = json.loads(out)
    assert list(got)[:3] == ["G", "BP-G", "RP-G"]
    np.testing.assert_allclose(list(got.values()), CHECK_VECTOR, atol=1e-4)
    rc, out, _ = run(capsys, "predict", "--model", RELEASED_MODEL, "--teff", 5780, "--logg", 4.44, "--feh", 0,
                     "--ebv", 1)
    assert out.split()[:2] == ["G", "7.2703"]


def test_evaluate_json_and_table(capsys, tmp_path, released_model, sample_8k):
    rc, out, _ = run(capsys, "-q", "evaluate", "--model", RELEASED_MODEL, "--catalog", SAMPLE_8K,
                     "--update-reddening", "--json", "--out", tmp_path / "ev.parquet")
    assert rc == 0
    s = json.loads(out)
    assert s["n_stars"] == 8000 and set(s["by_r_source"]) == {"sfd", "b19", "default"}
    assert s["by_r_source"]["b19"]["chi2_per_band"] == pytest.approx(0.843, abs=2e-3)
    from photoinfer.io.tables import read_table
    t = read_table(tmp_path / "ev.parquet")
    assert len(t["source_id"]) == 8000


def test_info(capsys, released_model, sample_8k):
    rc, out, _ = run(capsys, "info", RELEASED_MODEL, "--json")
    assert json.loads(out)["n_parameters"] == 1665
    rc, out, _ = run(capsys, "info", SAMPLE_8K, "--json")
    info = json.loads(out)
    assert info["n_stars"] == 8000 and info["bands_observed"]["G"] == 8000


def test_errors_name_the_file(capsys, tmp_path, released_model):
    rc, _, err = run(capsys, "evaluate", "--model", RELEASED_MODEL, "--catalog", tmp_path / "missing.parquet")
    assert rc == 2 and "missing.parquet" in err
    rc, _, err = run(capsys, "predict", "--model", tmp_path / "nomodel.h5", "--teff", 5000, "--logg", 4, "--feh", 0)
    assert rc == 2 and "nomodel.h5" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "photoinfer.cli", "--help"], capture_output=True, text=True, check=True)
    assert "predict" in out.stdout and "evaluate" in out.stdout
