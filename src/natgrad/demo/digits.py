"""An MLP on scikit-learn's handwritten digits: Hessian-free natural gradients against SGD and Adam.

The second part of ``natgrad demo``: the comparison of ``natgrad bench mnist-mlp`` at toy size,
with no download. A 64-64-10 ReLU MLP on the 8×8 digits (:func:`natgrad.data.load_digits`:
1347 training and 450 test images, stratified, pixels scaled to [0, 1]) is trained by six methods
from one initialization on the same batches of 64 (:func:`natgrad.bench.classifier.compare`):

* ``sgd`` (``optax.sgd(0.1)``) and ``adam`` (``optax.adam(1e-3)``);
* ``ng_fisher``, ``ng_fisher_mc``, ``ng_empirical_fisher``: :func:`natgrad.hessian_free` with the
  exact, Monte Carlo and empirical Fisher and
  :data:`natgrad.bench.classifier.NG_SETTINGS`;
* ``blog_rank_one``: the rank-one "empirical natural gradient" of gebob19/naturalgradient fed to
  Adam (:func:`natgrad.bench.classifier.blog_rank_one_transform`), a reference point.

Steps are interleaved across methods and timed one by one after compilation; the test accuracy
is evaluated every few steps outside the timed region.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

NAME = "digits"
SIZES = (64, 64, 10)
#: Test accuracy the table counts seconds and steps to.
TARGET = 0.95
# 20 epochs of 21 steps: the ng_* methods pass 95% within 2–4 epochs, SGD and Adam near the end;
# training takes ~2 s of the ~15–20 s, the rest is compiling six optimizers and the product timing.
DEFAULTS = {"epochs": 20, "batch_size": 64, "eval_every": 5, "seed": 0}
QUICK = {"epochs": 3}
#: The digits run's changes to NG_SETTINGS: the step size decays over the whole run (MNIST's
#: two-epoch decay would end after 42 of the 420 steps here).
NG_OVERRIDES = {"learning_rate_decay_epochs": None}

DESCRIPTION = f"""\
Then: a {"-".join(map(str, SIZES))} ReLU MLP on scikit-learn's handwritten digits (1797 8×8
images, ten classes; 1347 train / 450 test, stratified; pixels scaled to [0, 1]), trained from one
initialization on the same batches of {DEFAULTS["batch_size"]} by sgd, adam, three Hessian-free
natural gradients (natgrad.hessian_free with the exact Fisher, a one-sample Monte Carlo Fisher and
the empirical Fisher: ng_fisher, ng_fisher_mc, ng_empirical_fisher) and blog_rank_one (the
rank-one "empirical natural gradient" of gebob19/naturalgradient fed to Adam, a reference
point), for {DEFAULTS["epochs"]} epochs ({QUICK["epochs"]} with --quick; --digits-epochs). The table
gives the test accuracy per epoch, seconds per epoch, training seconds and steps to {TARGET:g} test
accuracy, curvature-vector products per step and the cost of one product over one gradient:

  demo-digits.json    configuration, versions, machine, one row per method with its accuracy
                      trace (every {DEFAULTS["eval_every"]} steps);
  demo-digits.png     test accuracy against epoch and against training seconds.

--only logistic, --only digits or --only gp runs one part (default: all three).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The digits options of ``natgrad demo`` (``--out``, ``--quick``, ``--no-progress`` are
    shared with the logistic part)."""
    from natgrad.bench import classifier

    parser.add_argument(
        "--digits-epochs",
        type=int,
        default=None,
        help=f"epochs of the digits MLP (default {DEFAULTS['epochs']}; "
        f"{QUICK['epochs']} with --quick)",
    )
    parser.add_argument(
        "--digits-methods",
        default=",".join(classifier.METHODS),
        help="comma-separated methods of the digits part (default: %(default)s)",
    )
    parser.add_argument(
        "--digits-seed",
        type=int,
        default=DEFAULTS["seed"],
        help="seed of the digits split, initialization and data order (default %(default)s)",
    )
    parser.add_argument(
        "--only",
        choices=("logistic", "digits", "gp"),
        default=None,
        help="run only one part of the demo (default: all three)",
    )


def _config(args: argparse.Namespace) -> dict:
    from natgrad.bench import classifier

    quick = bool(getattr(args, "quick", False))
    epochs = getattr(args, "digits_epochs", None)
    if epochs is None:
        epochs = (QUICK if quick else DEFAULTS)["epochs"]
    if epochs < 1:
        raise SystemExit("natgrad demo: --digits-epochs must be ≥ 1")
    try:
        methods = classifier.parse_methods(getattr(args, "digits_methods", None))
    except ValueError as err:
        raise SystemExit(f"natgrad demo: --digits-methods: {err}") from None
    return {
        "data": "digits",
        "quick": quick,
        "seed": getattr(args, "digits_seed", DEFAULTS["seed"]),
        "epochs": epochs,
        "batch_size": DEFAULTS["batch_size"],
        "eval_every": DEFAULTS["eval_every"],
        "methods": methods,
        "model": f"MLP {'-'.join(map(str, SIZES))}, ReLU, uniform ±1/√fan_in init",
        "dtype": "float32",
        "target_accuracy": TARGET,
        "ng_settings": {**classifier.NG_SETTINGS, **NG_OVERRIDES},
    }


def run_experiment(config: dict, *, show_progress: bool = True) -> tuple[list[dict], object]:
    """Train every method of ``config`` on the digits; returns ``(rows, data)``."""
    import jax
    import numpy as np

    from natgrad import demo
    from natgrad.bench import classifier
    from natgrad.data import load_digits

    data = load_digits(seed=config["seed"])
    split = classifier.Split(
        data.x_train, data.y_train.astype(np.int32), data.x_test, data.y_test.astype(np.int32)
    )
    params0 = classifier.mlp_init(jax.random.PRNGKey(config["seed"]), SIZES)
    total = config["epochs"] * (len(split.y_train) // config["batch_size"])
    with demo.progress(show_progress) as bar:
        task = bar.add_task("digits MLP steps", total=total)
        rows = classifier.compare(
            config["methods"],
            params0,
            split,
            epochs=config["epochs"],
            batch_size=config["batch_size"],
            seed=config["seed"],
            eval_every=config["eval_every"],
            target=TARGET,
            configs={m: NG_OVERRIDES for m in config["methods"] if m in classifier.CURVATURE_OF},
            cvp_repeats=3,
            cvp_min_time=0.005,
            cvp_curvature_batch=False,
            progress=lambda n: bar.advance(task, n),
        )
    return rows, data


def run(args: argparse.Namespace) -> int:
    """The digits part of ``natgrad demo``: table, ``demo-digits.json`` and ``demo-digits.png``."""
    from natgrad import demo
    from natgrad.bench import classifier

    config = _config(args)
    out = Path(getattr(args, "out", "natgrad-out"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with demo.x64(False):
        rows, data = run_experiment(config, show_progress=not getattr(args, "no_progress", False))
        info = demo.environment_info()
    config["wall_seconds"] = time.perf_counter() - start
    title = (
        f"MLP {'-'.join(map(str, SIZES))} on digits ({len(data.y_train)} train, "
        f"{len(data.y_test)} test, batch {config['batch_size']}, {config['epochs']} epochs)"
    )
    classifier.print_comparison(rows, title=title, target=TARGET)
    payload = {
        "demo": NAME,
        "config": config,
        "versions": info["versions"],
        "machine": info["machine"],
        "results": rows,
    }
    json_path = demo.write_json(out / f"demo-{NAME}.json", payload)
    png_path = classifier.plot_comparison(
        out / f"demo-{NAME}.png", rows, title=title, target=TARGET
    )
    print(f"wrote {json_path}", flush=True)
    if png_path is None:
        print("matplotlib is not installed: no plot (pip install natgrad[demo])", file=sys.stderr)
    else:
        print(f"wrote {png_path}", flush=True)
    print(f"digits part: {config['wall_seconds']:.1f} s", file=sys.stderr)
    return 0
