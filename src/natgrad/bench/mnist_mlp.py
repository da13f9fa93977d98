"""Benchmark: a 784-128-10 MLP on MNIST trained by SGD, Adam, three Hessian-free natural
gradients and the blog's rank-one step, from one initialization and one data order.

The comparison is :func:`natgrad.bench.classifier.compare`: every method sees the same batches
of 128 (``default_rng(seed + epoch).permutation``, the last partial batch dropped); the steps of
all methods are interleaved and each is timed alone after a jit warm-up; the test accuracy is
evaluated every ``--eval-every`` steps and at each epoch's end, outside the timed region. For the
three ``ng_*`` methods it also reports the mean curvature-vector products per step (CG
iterations + 1 for the warm start's residual) and the measured cost of one product over one
gradient on a training batch (:func:`natgrad.bench.classifier.cvp_over_grad`).

The data: MNIST as an npz file with ``x_train`` (60000, 28, 28) uint8, ``y_train`` (60000,),
``x_test`` (10000, 28, 28) and ``y_test`` (10000,), from ``--mnist PATH`` or the environment
variable ``NATGRAD_MNIST``; nothing is downloaded. Inputs are flattened to 784 and divided by 255
(float32).

Run it as ``natgrad bench mnist-mlp --mnist mnist.npz --out DIR``; it writes
``DIR/mnist-mlp.json`` and ``DIR/mnist-mlp.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from natgrad.bench import classifier, common

BENCHMARK = "mnist-mlp"
ENV_VAR = "NATGRAD_MNIST"
SIZES = (784, 128, 10)
TARGET = 0.97
DEFAULT_EPOCHS = 2
QUICK = {"epochs": 1, "train_size": 12_800, "test_size": 2_000}

DESCRIPTION = f"""\
A 784-128-10 ReLU MLP on MNIST, trained with six optimizers from the same initialization on the
same batches (batch 128, the training set permuted per epoch):

  sgd                  optax.sgd(0.1)
  adam                 optax.adam(1e-3)
  ng_fisher            natgrad.hessian_free, exact Fisher (= GGN for softmax cross-entropy)
  ng_fisher_mc         natgrad.hessian_free, one-sample Monte Carlo Fisher
  ng_empirical_fisher  natgrad.hessian_free, empirical Fisher
  blog_rank_one        gebob19/naturalgradient's "empirical" step X = (GGᵀ)⁺G per layer by
                       100 CG iterations, fed to Adam (a reference point, not a natural gradient)

The ng_* methods share natgrad.bench.classifier.NG_SETTINGS. Steps of all methods are interleaved
and timed one by one after a jit warm-up; test accuracy is evaluated every --eval-every steps and
at each epoch's end, outside the timed region.

Reports, per method: test accuracy per epoch, median seconds per epoch and per step, training
seconds and steps to {TARGET:g} test accuracy, curvature-vector products per step and the cost of
one product over one gradient (ng_* only), and the ratios of seconds to {TARGET:g} against adam
and sgd.

MNIST comes from --mnist PATH or ${ENV_VAR}: an npz with x_train (60000, 28, 28) uint8, y_train,
x_test, y_test. Writes OUT/mnist-mlp.json and, with matplotlib, OUT/mnist-mlp.png.

Example:  {ENV_VAR}=/path/mnist.npz OPENBLAS_NUM_THREADS=1 natgrad bench mnist-mlp --out results/
          natgrad bench mnist-mlp --quick --mnist mnist.npz   (1 epoch on 12800 examples)
"""


def load_mnist(
    path: str | os.PathLike | None, *, train_size: int | None = None, test_size: int | None = None
) -> tuple[classifier.Split, Path]:
    """MNIST from an npz file: inputs (N, 784) float32 in [0, 1], labels int32.

    Args:
      path: the npz file; None reads the ``NATGRAD_MNIST`` environment variable.
      train_size, test_size: keep the first this many examples (None: all).

    Returns:
      ``(split, path)``.

    Raises:
      SystemExit: no path given, the file is missing, or its arrays are not MNIST's; the message
        names both ways to give the file.
    """
    how = (
        f"give the MNIST npz (x_train (60000, 28, 28) uint8, y_train, x_test, y_test) with "
        f"--mnist PATH or the environment variable {ENV_VAR}=PATH"
    )
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        raise SystemExit(f"natgrad bench mnist-mlp: no MNIST data: {how}")
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"natgrad bench mnist-mlp: {path} does not exist: {how}")
    with np.load(path) as raw:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(raw.files)
        if missing:
            raise SystemExit(
                f"natgrad bench mnist-mlp: {path} lacks {', '.join(sorted(missing))}: {how}"
            )
        arrays = {k: raw[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def prepare(x: np.ndarray, y: np.ndarray, size: int | None, part: str):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != x.shape[:1]:
            raise SystemExit(
                f"natgrad bench mnist-mlp: {path}: x_{part} must be (N, 28, 28) with y_{part} "
                f"(N,), got {x.shape} and {y.shape}: {how}"
            )
        if size is not None:
            if size > x.shape[0]:
                raise SystemExit(
                    f"natgrad bench mnist-mlp: asked for {size} {part} examples, {path} has "
                    f"{x.shape[0]}"
                )
            x, y = x[:size], y[:size]
        x = x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0)
        return x, y.astype(np.int32)

    x_train, y_train = prepare(arrays["x_train"], arrays["y_train"], train_size, "train")
    x_test, y_test = prepare(arrays["x_test"], arrays["y_test"], test_size, "test")
    return classifier.Split(x_train, y_train, x_test, y_test), path


def data_sizes(args: argparse.Namespace, quick: dict) -> tuple[int | None, int | None]:
    """(train_size, test_size): ``--train-size``/``--test-size``, else ``quick``'s with
    ``--quick``, else None (all of MNIST)."""
    train_size, test_size = args.train_size, args.test_size
    if args.quick:
        train_size = quick["train_size"] if train_size is None else train_size
        test_size = quick["test_size"] if test_size is None else test_size
    return train_size, test_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``natgrad bench mnist-mlp``."""
    parser.add_argument(
        "--mnist",
        default=None,
        metavar="PATH",
        help=f"MNIST npz file (default: ${ENV_VAR})",
    )
    parser.add_argument(
        "--out",
        default="bench-out",
        type=Path,
        help="directory for mnist-mlp.json and .png (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"passes over the data (default {DEFAULT_EPOCHS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['epochs']} epoch on the first {QUICK['train_size']} training examples, "
        f"test on {QUICK['test_size']} (under a minute)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(classifier.METHODS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initialization, data order and keys (default 0)"
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=50,
        help="evaluate test accuracy every this many steps (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="(default %(default)s)")
    parser.add_argument("--train-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--test-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cvp-repeats",
        type=int,
        default=None,
        help="repeats of the product-cost timing (default 7, --quick 3)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show a progress bar on stderr"
    )


def _config(args: argparse.Namespace, data: classifier.Split, path: Path) -> dict[str, Any]:
    quick = bool(args.quick)
    epochs = args.epochs
    if epochs is None:
        epochs = QUICK["epochs"] if quick else DEFAULT_EPOCHS
    try:
        methods = classifier.parse_methods(args.methods)
    except ValueError as err:
        raise SystemExit(f"natgrad bench mnist-mlp: --methods: {err}") from None
    if epochs < 1 or args.batch_size < 1 or args.eval_every < 1:
        raise SystemExit(
            "natgrad bench mnist-mlp: --epochs, --batch-size and --eval-every must be ≥ 1"
        )
    if data.x_train.shape[0] < args.batch_size:
        raise SystemExit(
            f"natgrad bench mnist-mlp: {data.x_train.shape[0]} training examples, fewer than "
            f"the batch size {args.batch_size}"
        )
    repeats = args.cvp_repeats if args.cvp_repeats is not None else (3 if quick else 7)
    return {
        "quick": quick,
        "data": str(path),
        "train_size": int(data.x_train.shape[0]),
        "test_size": int(data.x_test.shape[0]),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": int(data.x_train.shape[0]) // args.batch_size,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "methods": methods,
        "model": f"MLP {'-'.join(map(str, SIZES))}, ReLU, uniform ±1/√fan_in init",
        "dtype": "float32",
        "loss": "mean softmax cross-entropy",
        "target_accuracy": TARGET,
        "ng_settings": dict(classifier.NG_SETTINGS),
        "cvp_products": 10,
        "cvp_repeats": repeats,
        "timing": "each step timed alone (block_until_ready) after a jit warm-up on the first "
        "batch; methods interleaved step by step (order reversed every step); batch "
        "preparation, keys, diagnostics and evaluation outside the timed region",
        "curvature_products_per_step": "mean over steps of CG iterations + 1 (the residual of "
        "the warm start, which hessian_free always passes)",
        "cvp_over_grad": "(t(build + 11 products) − t(build + 1 product))/10 over t(jax.grad), "
        "same batch of batch_size examples, medians of alternating repeats",
    }


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print a table, write ``OUT/mnist-mlp.json`` (and ``.png``)."""
    import jax

    from natgrad import demo

    train_size, test_size = data_sizes(args, QUICK)
    data, path = load_mnist(args.mnist, train_size=train_size, test_size=test_size)
    config = _config(args, data, path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with common.jax_x64(False):
        environment = common.environment_info()
        params0 = classifier.mlp_init(jax.random.PRNGKey(config["seed"]), SIZES)
        total = config["epochs"] * config["steps_per_epoch"]
        with demo.progress(not args.no_progress) as bar:
            task = bar.add_task("mnist-mlp steps", total=total)
            rows = classifier.compare(
                config["methods"],
                params0,
                data,
                epochs=config["epochs"],
                batch_size=config["batch_size"],
                seed=config["seed"],
                eval_every=config["eval_every"],
                target=TARGET,
                cvp_repeats=config["cvp_repeats"],
                progress=lambda n: bar.advance(task, n),
            )
    config["wall_seconds"] = time.perf_counter() - start
    config["load_average_end"] = common.load_average()
    payload = {
        "benchmark": BENCHMARK,
        "config": config,
        "versions": environment["versions"],
        "machine": environment["machine"],
        "results": rows,
    }
    json_path = common.write_json(out / f"{BENCHMARK}.json", payload)
    title = (
        f"MNIST {'-'.join(map(str, SIZES))} MLP: {config['train_size']} train, "
        f"{config['test_size']} test, batch {config['batch_size']}, {config['epochs']} epoch(s)"
    )
    classifier.print_comparison(rows, title=title, target=TARGET)
    load = environment["machine"]["load_average"]
    cpus = environment["machine"]["cpu_count_usable"] or 1
    if load and max(load[0], (config["load_average_end"] or [0])[0]) > cpus:
        print(
            f"note: the load average ({load[0]:g} at the start, {config['load_average_end'][0]:g} "
            f"at the end) exceeded the {cpus} CPUs; times include waiting for other processes",
        )
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = classifier.plot_comparison(out / f"{BENCHMARK}.png", rows, title=title, target=TARGET)
        print(f"wrote {png}" if png else "matplotlib is not installed: no plot")
    print(f"total time {config['wall_seconds']:.1f} s", file=sys.stderr)
    return 0
