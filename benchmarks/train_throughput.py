"""Training throughput: star-epochs per second and peak memory, photoinfer (JAX + optax) versus the
paper's recipe written directly in Keras/TensorFlow, on the same data.

Usage::

    python benchmarks/train_throughput.py --sizes 100000 1000000 --epochs 3
    python benchmarks/train_throughput.py --full-schedule 1000000        # 20 x 25 with photoinfer.train

Data: N stars with θ resampled (with jitter) from the released 8k sample, reddening, the released
model's ŷ plus noise, and each star's whitening factor W (13 × 13) from its own photometric errors:
what one training epoch consumes.  Each framework runs in its own process (peak memory = that
process's maximum resident set size): photoinfer's jitted epoch (one ``lax.scan`` over batches,
numpy shuffle, batches gathered once per epoch), and tf-keras ``model.fit`` on the same arrays with
the paper's architecture, regularization, loss, Adam and batch size.  TensorFlow runs from
``$PHOTOINFER_TF_PYTHON`` (default ``/work/venv-tf/bin/python``); without it, the Keras rows say
"unavailable".  Steady state: the first epoch (compilation) is not timed.

``--full-schedule N`` trains photoinfer's complete 20 × 25 schedule (:func:`photoinfer.train.train`)
on an N-star mock catalog and records the wall time, the time per part and the peak memory.

Results go to ``benchmarks/results/train_throughput.json`` (or ``train_full_schedule_<N>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHOTOINFER_SHARED", REPO.parent / "shared")) / "data" / "green2020"
TF_PYTHON = os.environ.get("PHOTOINFER_TF_PYTHON", "/work/venv-tf/bin/python")
B = 13


def peak_rss_gib() -> float:
    """This process's peak resident memory [GiB]: VmHWM (Linux), which, unlike ``ru_maxrss``, does not
    inherit the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ---------------------------------------------------------------------- data
def mock_training_catalog(n: int, seed: int = 0):
    """A Catalog of n training-type stars: θ from the 8k sample with jitter, released-model photometry."""
    from photoinfer.catalog import Catalog
    from photoinfer.io.catalogs import read_catalog
    from photoinfer.io.models import load_model
    rng = np.random.default_rng(seed)
    model = load_model(SHARED / "green2020_nn_model.h5")
    pool = read_catalog(SHARED / "green2020_sample_8k.h5").theta
    pool = pool[np.isfinite(pool).all(axis=1)]
    th = pool[rng.integers(0, len(pool), n)] + rng.normal(0, 1, (n, 3)) * [50.0, 0.05, 0.05]
    sig_th = np.array([50.0, 0.1, 0.05])
    E = rng.exponential(0.3, n)
    sE = 0.02 + 0.1 * E
    mu = rng.uniform(6, 12, n)
    plx = 10 ** (2 - mu / 5)
    plx_err = plx * rng.uniform(0.02, 0.3, n)
    m = np.concatenate([np.asarray(model.predict_magnitudes(th[i:i + 200000], mu[i:i + 200000], E[i:i + 200000]))
                        for i in range(0, n, 200000)])
    err = rng.uniform(0.02, 0.05, (n, B))
    mag = m + rng.normal(0, 1, (n, B)) * err
    miss = rng.random((n, B)) < 0.1
    miss[:, 0] = False
    mag[miss] = np.nan
    err[miss] = np.nan
    return Catalog.from_arrays(mag, err, bands=model.bands, parallax=plx + rng.normal(0, 1, n) * plx_err,
                               parallax_err=plx_err, theta=th + rng.normal(0, 1, (n, 3)) * sig_th,
                               theta_cov=np.broadcast_to(np.diag(sig_th ** 2), (n, 3, 3)),
                               E0=np.maximum(E + rng.normal(0, 1, n) * sE, 0), sigma_E0=sE, name=f"mock{n}"), model


def make_arrays(n: int, path: Path, seed: int = 0) -> dict:
    """Write the per-star arrays an epoch consumes (x, E, y, W) to ``path`` (.npy files in a directory)."""
    import jax.numpy as jnp

    from photoinfer.evaluate import star_data
    from photoinfer.train.rebuild import whitening_all
    cat, model = mock_training_catalog(n, seed)
    d = star_data(cat)
    med, std = jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)
    t = time.perf_counter()
    W = whitening_all(model.params, med, std, d, d.E0, d.sigma_E0, first=False, batch_size=8192)
    t_w = time.perf_counter() - t
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "x.npy", np.asarray((np.asarray(d.theta) - model.theta_med) / model.theta_std, np.float32))
    np.save(path / "E.npy", np.asarray(d.E0, np.float32))
    np.save(path / "y.npy", np.asarray(d.y_hat, np.float32))
    np.save(path / "W.npy", W)
    return {"whitening_seconds_incl_compile": t_w}


# ---------------------------------------------------------------------- workers
def worker_jax(path: Path, epochs: int, batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    from photoinfer.model import network
    from photoinfer.train.loop import _make_epoch, make_optimizer
    x, E, y, W = (np.load(path / f"{k}.npy") for k in ("x", "E", "y", "W"))
    n = len(x)
    nb = -(-n // batch)
    opt = make_optimizer(1e-3)
    params = network.init_params(jax.random.PRNGKey(0), B)
    state = opt.init(params)
    fn = _make_epoch(opt, nb, batch, B, 1e-4, 1e-2)
    dev = [jnp.asarray(a) for a in (x, E, y, W)]
    w = np.zeros(nb * batch, np.float32)
    w[:n] = 1
    w = jnp.asarray(w)
    rng = np.random.default_rng(0)
    times, losses = [], []
    for e in range(epochs + 1):
        t = time.perf_counter()
        idx = np.zeros(nb * batch, np.int32)
        idx[:n] = rng.permutation(n)
        params, state, loss, _, cnt = fn(params, state, *dev, jnp.asarray(idx), w)
        loss = float(np.sum(np.asarray(loss) * np.asarray(cnt)) / n)
        times.append(time.perf_counter() - t)
        losses.append(loss)
    steady = float(np.mean(times[1:]))
    return {"framework": "photoinfer (JAX + optax, lax.scan epoch)", "jax": jax.__version__,
            "backend": jax.default_backend(), "n": n, "batch_size": batch, "timed_epochs": epochs,
            "first_epoch_seconds": times[0], "epoch_seconds": steady, "star_epochs_per_second": n / steady,
            "loss_first_last": [losses[0], losses[-1]], "peak_rss_gib": peak_rss_gib()}


def worker_rebuild(n: int) -> dict:
    """The per-iteration rebuild (reddening update, Jacobians, C_y, W, reduced χ²) for n stars."""
    import jax.numpy as jnp

    from photoinfer.evaluate import star_data
    from photoinfer.train.rebuild import rebuild_all
    cat, model = mock_training_catalog(n)
    d = star_data(cat)
    med, std = jnp.asarray(model.theta_med, jnp.float32), jnp.asarray(model.theta_std, jnp.float32)
    rebuild_all(model.params, med, std, star_data(cat.subset(np.arange(min(n, 8192)))))  # compile
    t = time.perf_counter()
    rebuild_all(model.params, med, std, d)
    s = time.perf_counter() - t
    return {"n": n, "rebuild_seconds": s, "seconds_per_1e5_stars": s * 1e5 / n, "peak_rss_gib": peak_rss_gib()}


def worker_keras(path: Path, epochs: int, batch: int) -> dict:
    """The paper's recipe in tf-keras: same architecture, regularization, loss, Adam, batch size."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras as keras
    x, E, y, W = (np.load(path / f"{k}.npy") for k in ("x", "E", "y", "W"))
    n = len(x)
    A = np.eye(B, dtype=np.float32)
    A[1:, 0] = -1.0
    xin = keras.Input((3,), name="theta_p")
    ein = keras.Input((1,), name="E")
    win = keras.Input((B, B), name="W")
    yin = keras.Input((B,), name="y_obs")
    h = keras.layers.Dense(32, activation="sigmoid", kernel_regularizer=keras.regularizers.l2(1e-4),
                           name="stellar_model_hidden_1")(xin)
    h = keras.layers.Dense(32, activation="sigmoid", kernel_regularizer=keras.regularizers.l2(1e-4),
                           name="stellar_model_hidden_2")(h)
    bm = keras.layers.Dense(B, name="BM")(h)
    R = keras.layers.Dense(B, activation="exponential", kernel_regularizer=keras.regularizers.l1(1e-2), name="R")(xin)
    ba = keras.layers.Dense(B, use_bias=False, trainable=False, name="BA")(R)  # A R (frozen colour matrix)
    ym = keras.layers.Lambda(lambda t: t[0] + t[1] * t[2])([bm, ein, ba])
    r = keras.layers.Lambda(lambda t: tf.einsum("nij,nj->ni", t[0], t[1] - t[2]))([win, yin, ym])
    model = keras.Model([xin, ein, win, yin], r)
    model.get_layer("BA").set_weights([A.T])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=lambda yt, yp: tf.reduce_sum(tf.square(yp - yt), axis=-1) / B)
    zeros = np.zeros((n, B), np.float32)
    inputs = [x, E[:, None], W, y]
    t = time.perf_counter()
    model.fit(inputs, zeros, batch_size=batch, epochs=1, shuffle=True, verbose=0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    h = model.fit(inputs, zeros, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    steady = (time.perf_counter() - t) / epochs
    return {"framework": "tf-keras model.fit (paper recipe)", "tensorflow": tf.__version__, "n": n,
            "batch_size": batch, "timed_epochs": epochs, "first_epoch_seconds": first, "epoch_seconds": steady,
            "star_epochs_per_second": n / steady, "loss_last": float(h.history["loss"][-1]),
            "peak_rss_gib": peak_rss_gib()}


# ---------------------------------------------------------------------- driver
def _run_worker(python, args, env_extra=None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    r = subprocess.run([python, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "gpu": "none in this session (the device machine was not lent to this task)",
            "load_average_at_start": os.getloadavg()}


def full_schedule(n: int, out: Path, seed: int = 0, iterations: int = 20, epochs: int = 25) -> dict:
    from photoinfer.train import TrainConfig, train
    t0 = time.perf_counter()
    cat, _ = mock_training_catalog(n, seed)
    t_data = time.perf_counter() - t0
    progress = []

    def cb(event, state, rec):
        if event == "iteration":
            progress.append({k: rec[k] for k in ("iteration", "train_loss", "val_loss", "frac_cut", "epochs_seconds",
                                                 "rebuild_seconds", "star_epochs_per_second")})
            out.write_text(json.dumps({"n": n, "status": "running", "iterations_done": progress,
                                       "peak_rss_gib_so_far": peak_rss_gib()}, indent=1))

    t0 = time.perf_counter()
    model, hist = train(cat, TrainConfig(iterations=iterations, epochs=epochs, seed=seed), callback=cb)
    total = time.perf_counter() - t0
    res = {"n": n, "status": "done", "iterations": iterations, "epochs": epochs, "batch_size": 1024,
           "mock_seconds": t_data, "train_seconds": total, "timings": hist.timings,
           "final_train_loss": hist.epochs[-1]["train_loss"], "final_val_loss": hist.epochs[-1]["val_loss"],
           "peak_rss_gib": peak_rss_gib(), "machine": machine(), "iterations_done": progress}
    out.write_text(json.dumps(res, indent=1))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100000, 1000000])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per framework (after one untimed)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    p.add_argument("--full-schedule", type=int, default=None, metavar="N")
    p.add_argument("--worker", choices=["jax", "keras", "rebuild"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "jax":
        print(json.dumps(worker_jax(Path(args.data), args.epochs, args.batch_size)))
        return
    if args.worker == "keras":
        print(json.dumps(worker_keras(Path(args.data), args.epochs, args.batch_size)))
        return
    if args.worker == "rebuild":
        print(json.dumps(worker_rebuild(args.n)))
        return
    if args.full_schedule:
        out = REPO / "benchmarks" / "results" / f"train_full_schedule_{args.full_schedule}.json"
        print(json.dumps(full_schedule(args.full_schedule, out), indent=1))
        return
    results = {"machine": machine(), "command": "python benchmarks/train_throughput.py " + " ".join(argv or sys.argv[1:]),
               "runs": []}
    tf_ok = Path(TF_PYTHON).exists()
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            info = make_arrays(n, Path(tmp))
            common = ["--data", tmp, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
            run = {"n": n, **info, "jax": _run_worker(sys.executable, ["--worker", "jax", *common])}
            run["keras"] = (_run_worker(TF_PYTHON, ["--worker", "keras", *common]) if tf_ok
                            else {"error": f"unavailable: no TensorFlow python at {TF_PYTHON}"})
            run["rebuild"] = _run_worker(sys.executable, ["--worker", "rebuild", "--n", str(n)])
        results["runs"].append(run)
        print(json.dumps(run, indent=1), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
