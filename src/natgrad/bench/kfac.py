"""``natgrad bench kfac``: natgrad's K-FAC against kfac-jax, SGD and Adam on MNIST.

Two models (:data:`MODELS`), float32, mean softmax cross-entropy, batch 128, inputs / 255:

* ``mlp``: 784-128-10 ReLU MLP (:func:`natgrad.bench.classifier.mlp_init`);
* ``cnn``: two 5×5 stride-2 SAME ReLU convolutions 1→16→16 (NHWC/HWIO) and a dense layer
  784→10 (:func:`cnn_init`, :func:`cnn_apply`).

Every method starts from one initialization per model and sees the same batches in the same
order (epoch e: ``default_rng(seed + e).permutation(n)``, the last partial batch dropped):

* ``natgrad_kfac``: :func:`natgrad.kfac` with its **default settings** (``--kfac-settings`` JSON
  overrides them) and a key ``fold_in(PRNGKey(seed), t)`` at step t;
* ``sgd`` (learning rate 0.1) and ``adam`` (1e-3), optax;
* ``kfac_jax``: kfac-jax 0.0.8 in its own environment (it needs jax 0.8.3), run as a subprocess
  (:mod:`natgrad.bench.kfac_jax_runner`) on the same data, order and initialization, with the
  hand-tuned settings of :data:`KFAC_JAX_SETTINGS`. Its python comes from ``--kfac-jax-python``
  or ``NATGRAD_KFAC_JAX_PYTHON`` (``benchmarks/make_kfac_jax_env.sh DIR`` makes one); without
  it the row is absent and the JSON's ``config["kfac_jax"]`` says why.

Timing: each natgrad/optax step is one jitted function (params and optimizer state donated, as a
training loop would) compiled and run once on the first batch before the clock starts; then
``natgrad_kfac``, ``sgd`` and ``adam`` take their steps in turn (order reversed every step) and
each step is timed alone (``perf_counter`` and ``block_until_ready``). Batches, keys and the
test-accuracy evaluations (every ``--eval-every`` steps and at each epoch's end) are outside the
timed region. kfac-jax is timed the same way in its process, before or after (not interleaved).

Rows (one per model and method): ``model``, ``method``, ``settings``, ``seconds_per_step``
(median), ``mean_seconds_per_step`` (all steps, so K-FAC's inverse refreshes and statistics
updates are amortized), ``mean_step_over_sgd_step`` (that mean over SGD's median step),
``test_accuracy`` (per epoch), ``seconds_to_97`` / ``steps_to_97``, ``seconds_to_98`` /
``steps_to_98`` (first evaluation at or above; null if never), ``finite`` and ``trace``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from natgrad.bench import classifier, common, mnist_mlp
from natgrad.losses import SoftmaxCrossEntropy
from natgrad.optim.kfac import kfac

PyTree = Any
BENCHMARK = "kfac"
KFAC_JAX_ENV = "NATGRAD_KFAC_JAX_PYTHON"
MODELS = ("mlp", "cnn")
METHODS = ("natgrad_kfac", "kfac_jax", "sgd", "adam")
TARGETS = (0.97, 0.98)
DEFAULT_EPOCHS = 5
QUICK = {"epochs": 1, "train_size": 6_400, "test_size": 2_000}
LOSS = SoftmaxCrossEntropy()
#: kfac-jax hand-tuned on this MLP (its adaptive settings diverge on minibatch MNIST); the
#: explicit patch moments are kfac-jax's own, ~25× faster than its default loop on XLA:CPU.
KFAC_JAX_SETTINGS: dict[str, Any] = {
    "learning_rate": 0.3,
    "momentum": 0.9,
    "damping": 1.0,
    "conv_patches_moments": "explicit",
}
RUNNER = Path(__file__).with_name("kfac_jax_runner.py")

DESCRIPTION = f"""\
natgrad's K-FAC (default settings) against kfac-jax 0.0.8, SGD(0.1) and Adam(1e-3) on MNIST:
a 784-128-10 MLP and a small CNN, batch 128, float32, one initialization and data order.
Writes OUT/{BENCHMARK}.json and OUT/{BENCHMARK}.png. MNIST from --mnist PATH or
${mnist_mlp.ENV_VAR}; kfac-jax from --kfac-jax-python PATH or ${KFAC_JAX_ENV} (a venv made by
benchmarks/make_kfac_jax_env.sh DIR), skipped and said so when absent.
"""


# --------------------------------------------------------------------------------------------
# The CNN.
# --------------------------------------------------------------------------------------------

CNN_KERNELS = ((5, 5, 1, 16), (5, 5, 16, 16))
CNN_DENSE = (7 * 7 * 16, 10)


def cnn_init(key: jax.Array, dtype: Any = jnp.float32) -> list[dict]:
    """CNN parameters ``[{"w": HWIO kernel, "b"}, {"w", "b"}, {"w": (784, 10), "b"}]``.

    Uniform on ±1/√fan_in, fan_in the product of a kernel's non-output axes.
    """
    shapes = [*CNN_KERNELS, CNN_DENSE]
    params = []
    for k, shape in zip(jax.random.split(key, len(shapes)), shapes, strict=True):
        k_w, k_b = jax.random.split(k)
        bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
        params.append(
            {
                "w": jax.random.uniform(k_w, shape, dtype, -bound, bound),
                "b": jax.random.uniform(k_b, (shape[-1],), dtype, -bound, bound),
            }
        )
    return params


def cnn_apply(params: Sequence[Mapping[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits ``(B, 10)`` of inputs ``(B, 784)``: x → 28×28×1 → conv/ReLU ×2 (stride 2) → dense."""
    h = x.reshape(x.shape[0], 28, 28, 1)
    for layer in params[:-1]:
        h = jax.lax.conv_general_dilated(
            h, layer["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        h = jax.nn.relu(h + layer["b"])
    return h.reshape(h.shape[0], -1) @ params[-1]["w"] + params[-1]["b"]


def mlp_init(key: jax.Array, dtype: Any = jnp.float32) -> list[dict]:
    """The 784-128-10 MLP of ``natgrad bench mnist-mlp``."""
    return classifier.mlp_init(key, mnist_mlp.SIZES, dtype)


#: model name → (init, apply).
MODEL_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "mlp": (mlp_init, classifier.mlp_apply),
    "cnn": (cnn_init, cnn_apply),
}


# --------------------------------------------------------------------------------------------
# natgrad / optax methods.
# --------------------------------------------------------------------------------------------


def build(
    method: str, apply: Callable, example_inputs: jax.Array, config: Mapping[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """``(optax transformation, settings)`` of ``natgrad_kfac``, ``sgd`` or ``adam``."""
    config = dict(config or {})
    if method == "natgrad_kfac":
        return kfac(apply, LOSS, example_inputs, **config), {"defaults": not config, **config}
    if method == "sgd":
        settings = {"learning_rate": 0.1, **config}
        return optax.sgd(**settings), settings
    if method == "adam":
        settings = {"learning_rate": 1e-3, **config}
        return optax.adam(**settings), settings
    raise ValueError(f"unknown in-process method {method!r}")


def make_step(tx: Any, apply: Callable, method: str) -> Callable:
    """Jitted ``step(params, state, x, y, key) -> (params, state)``, params and state donated."""

    def step(params, state, x, y, key):
        grads = jax.grad(lambda p: LOSS(apply(p, x), y))(params)
        if method == "natgrad_kfac":
            updates, state = tx.update(grads, state, params, batch=(x, y), key=key)
        else:
            updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.copy, tree)


def make_accuracy(apply: Callable) -> Callable[[PyTree, jax.Array, jax.Array], float]:
    """``accuracy(params, x, y)``: share of arg-max logits equal to the label, in chunks."""

    @jax.jit
    def correct(params, x, y):
        return jnp.sum(jnp.argmax(apply(params, x), axis=-1) == y)

    def accuracy(params, x, y, chunk=5_000):
        total = sum(
            int(correct(params, x[i : i + chunk], y[i : i + chunk]))
            for i in range(0, x.shape[0], chunk)
        )
        return total / x.shape[0]

    return accuracy


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of ``epoch``: ``default_rng(seed + epoch).permutation(n)``."""
    return np.random.default_rng(seed + epoch).permutation(n)


def batch_indices(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """Indices of every step's batch, (epochs · ⌊n/B⌋, B) int32."""
    steps = n // batch_size
    return np.concatenate(
        [
            epoch_order(n, seed, e)[: steps * batch_size].reshape(steps, batch_size)
            for e in range(epochs)
        ]
    ).astype(np.int32)


def eval_steps(steps_per_epoch: int, epochs: int, eval_every: int) -> list[int]:
    """0, every ``eval_every`` steps and each epoch's last step (sorted, unique)."""
    total = steps_per_epoch * epochs
    points = {0, *range(eval_every, total + 1, eval_every)}
    points |= {steps_per_epoch * (e + 1) for e in range(epochs)}
    return sorted(points)


def train_in_process(
    model: str,
    methods: Mapping[str, Mapping[str, Any]],
    params0: PyTree,
    data: classifier.Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``methods`` (name → config) on ``model`` step by step in turn; one trace each."""
    _, apply = MODEL_FUNCTIONS[model]
    n = data.x_train.shape[0]
    steps_per_epoch = n // batch_size
    order = batch_indices(n, batch_size, epochs, seed)
    evals = set(eval_steps(steps_per_epoch, epochs, eval_every))
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test, jnp.int32)
    accuracy = make_accuracy(apply)
    base_key = jax.random.PRNGKey(seed)

    def batch(t: int):
        idx = order[t]
        return jax.block_until_ready(
            (jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx], jnp.int32))
        )

    first_x, first_y = batch(0)
    runs = []
    for method, config in methods.items():
        tx, settings = build(method, apply, first_x, config)
        step = make_step(tx, apply, method)
        start = time.perf_counter()
        jax.block_until_ready(
            step(_copy(params0), tx.init(params0), first_x, first_y, base_key)
        )  # compile and warm up on a throwaway copy
        runs.append(
            {
                "method": method,
                "settings": settings,
                "step": step,
                "params": _copy(params0),
                "state": tx.init(params0),
                "compile_seconds": time.perf_counter() - start,
                "step_seconds": [],
                "trace": {"steps": [], "seconds": [], "test_accuracy": []},
            }
        )

    def evaluate(run, t):
        tr = run["trace"]
        tr["steps"].append(t)
        tr["seconds"].append(float(sum(run["step_seconds"])))
        tr["test_accuracy"].append(accuracy(run["params"], x_test, y_test))

    for run in runs:
        evaluate(run, 0)
    for t in range(1, order.shape[0] + 1):
        x, y = batch(t - 1)
        key = jax.block_until_ready(jax.random.fold_in(base_key, t - 1))
        for run in runs if t % 2 else reversed(runs):
            start = time.perf_counter()
            params, state = run["step"](run["params"], run["state"], x, y, key)
            jax.block_until_ready((params, state))
            run["step_seconds"].append(time.perf_counter() - start)
            run["params"], run["state"] = params, state
        if t in evals:
            for run in runs:
                evaluate(run, t)
        if progress is not None:
            progress(1)
    rows = []
    for run in runs:
        row = _row(
            model,
            run["method"],
            run["settings"],
            run["step_seconds"],
            run["trace"],
            steps_per_epoch,
        )
        row["finite"] = all(
            bool(np.all(np.isfinite(np.asarray(p)))) for p in jax.tree.leaves(run["params"])
        )
        row["compile_seconds"] = run["compile_seconds"]
        state = run["state"]
        if run["method"] == "natgrad_kfac":
            row["num_rejected"] = int(state.num_rejected)
            row["num_failed_inverses"] = int(state.num_failed_inverses)
        rows.append(row)
    return rows


def _row(
    model: str,
    method: str,
    settings: Mapping[str, Any],
    step_seconds: Sequence[float],
    trace: Mapping[str, list],
    steps_per_epoch: int,
) -> dict[str, Any]:
    steps = trace["steps"]
    epochs = [s / steps_per_epoch for s in steps]
    per_epoch = [
        acc
        for s, acc in zip(steps, trace["test_accuracy"], strict=True)
        if s and s % steps_per_epoch == 0
    ]
    trace = {**trace, "epochs": epochs}
    row: dict[str, Any] = {
        "model": model,
        "method": method,
        "settings": dict(settings),
        "seconds_per_step": statistics.median(step_seconds),
        "mean_seconds_per_step": float(np.mean(step_seconds)),
        "test_accuracy": per_epoch,
        "trace": trace,
    }
    for target in TARGETS:
        key = classifier.target_key(target)
        row[f"seconds_to_{key}"] = classifier.seconds_to(trace, target)
        row[f"steps_to_{key}"] = classifier.steps_to(trace, target)
    return row


# --------------------------------------------------------------------------------------------
# kfac-jax in its own environment.
# --------------------------------------------------------------------------------------------


def kfac_jax_python(option: str | None) -> tuple[str | None, str]:
    """The kfac-jax environment's python (or None) and how it was found or why it is absent."""
    path = option or os.environ.get(KFAC_JAX_ENV) or None
    if path is None:
        return None, (
            f"no kfac-jax environment given (--kfac-jax-python PATH or {KFAC_JAX_ENV}=PATH; "
            "benchmarks/make_kfac_jax_env.sh DIR makes one)"
        )
    if not Path(path).exists():
        return None, f"the kfac-jax python {path} does not exist"
    return str(path), f"from {'--kfac-jax-python' if option else KFAC_JAX_ENV}"


def run_kfac_jax(
    python: str,
    model: str,
    params0: PyTree,
    data: classifier.Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    settings: Mapping[str, Any],
    timeout: float = 3600.0,
) -> tuple[dict[str, Any] | None, str]:
    """Run kfac-jax through :mod:`~natgrad.bench.kfac_jax_runner`; ``(row or None, status)``."""
    n = data.x_train.shape[0]
    steps_per_epoch = n // batch_size
    arrays = {
        "x_train": np.asarray(data.x_train, np.float32),
        "y_train": np.asarray(data.y_train, np.int32),
        "x_test": np.asarray(data.x_test, np.float32),
        "y_test": np.asarray(data.y_test, np.int32),
        "order": batch_indices(n, batch_size, epochs, seed),
        "eval_steps": np.asarray(eval_steps(steps_per_epoch, epochs, eval_every), np.int32),
        "config_json": np.array(json.dumps({"model": model, "seed": seed, "kfac": dict(settings)})),
    }
    for i, layer in enumerate(params0):
        for name, value in layer.items():
            arrays[f"params/{i}/{name}"] = np.asarray(value, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, **arrays)
        try:
            proc = subprocess.run(
                [python, str(RUNNER), "--input", str(inp), "--output", str(out)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"kfac-jax runner failed to run: {err}"
        result = json.loads(out.read_text()) if out.exists() else None
    if proc.returncode != 0 or result is None or "error" in result:
        reason = (result or {}).get("error") or proc.stderr.strip().splitlines()[-1:] or ["?"]
        return None, f"kfac-jax runner failed (exit {proc.returncode}): {reason}"
    ev = result["eval"]
    trace = {"steps": ev["steps"], "seconds": ev["seconds"], "test_accuracy": ev["test_accuracy"]}
    row = _row(
        model, "kfac_jax", result["settings"], result["step_seconds"], trace, steps_per_epoch
    )
    row["finite"] = bool(result["finite"])
    row["compile_seconds"] = result.get("compile_seconds")
    row["kfac_jax_version"] = result.get("kfac_jax_version")
    row["jax_version"] = result.get("jax_version")
    row["registered_layers"] = result.get("registered_layers")
    refresh = set(result.get("inverse_update_steps") or [])
    other = [s for i, s in enumerate(result["step_seconds"]) if i not in refresh]
    row["seconds_per_step_without_inverse_updates"] = statistics.median(other) if other else None
    return row, f"ran kfac-jax {result.get('kfac_jax_version')} on jax {result.get('jax_version')}"


# --------------------------------------------------------------------------------------------
# The command.
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``natgrad bench kfac``."""
    parser.add_argument("--mnist", default=None, metavar="PATH", help="MNIST npz file")
    parser.add_argument(
        "--kfac-jax-python",
        default=None,
        metavar="PATH",
        help=f"python of a kfac-jax environment (default: ${KFAC_JAX_ENV})",
    )
    parser.add_argument("--out", default="bench-out", type=Path, help="output directory")
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"passes over the data (default {DEFAULT_EPOCHS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['epochs']} epoch on the first {QUICK['train_size']} training examples, "
        f"test on {QUICK['test_size']}",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="subset of: %(default)s")
    parser.add_argument("--methods", default=",".join(METHODS), help="subset of: %(default)s")
    parser.add_argument(
        "--kfac-settings",
        default="{}",
        metavar="JSON",
        help="keyword arguments of natgrad.kfac overriding its defaults (default: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    parser.add_argument("--eval-every", type=int, default=25, help="(default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default %(default)s)")
    parser.add_argument("--train-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--test-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _subset(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in allowed]
    if unknown or not names:
        raise SystemExit(
            f"natgrad bench kfac: --{what}: unknown {unknown or names}; choose from "
            f"{', '.join(allowed)}"
        )
    return list(dict.fromkeys(names))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per model, natgrad_kfac's ratios to the others (the issue's goals)."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == model}
        ours = by.get("natgrad_kfac")
        if ours is None:
            continue
        sgd, adam, kj = by.get("sgd"), by.get("adam"), by.get("kfac_jax")
        out[model] = {
            "mean_step_over_sgd_step": _ratio(
                ours["mean_seconds_per_step"], sgd and sgd["seconds_per_step"]
            ),
            "seconds_to_97_over_kfac_jax": _ratio(
                ours["seconds_to_97"], kj and kj["seconds_to_97"]
            ),
            "seconds_to_97_over_adam": _ratio(
                ours["seconds_to_97"], adam and adam["seconds_to_97"]
            ),
            "best_epoch_test_accuracy": max(ours["test_accuracy"], default=None),
            "best_evaluated_test_accuracy": max(ours["trace"]["test_accuracy"]),
        }
    return out


def print_table(rows: Sequence[Mapping[str, Any]], title: str) -> None:
    """One line per model and method: accuracies, step times and times to the targets."""
    table = []
    for r in rows:
        accs = r["test_accuracy"]
        table.append(
            [
                r["model"],
                r["method"],
                " ".join(f"{a:.4f}" for a in accs[:5]) + (" …" if len(accs) > 5 else ""),
                f"{1e3 * r['seconds_per_step']:.2f}",
                f"{1e3 * r['mean_seconds_per_step']:.2f}",
                common.format_seconds(r["seconds_to_97"]) if r["seconds_to_97"] else "—",
                str(r["steps_to_97"] or "—"),
                common.format_seconds(r["seconds_to_98"]) if r["seconds_to_98"] else "—",
            ]
        )
    common.print_table(
        title,
        [
            "model",
            "method",
            "test acc per epoch",
            "ms/step (median)",
            "ms/step (mean)",
            "s to 97%",
            "steps to 97%",
            "s to 98%",
        ],
        table,
    )


def plot(path: Path, rows: Sequence[Mapping[str, Any]], title: str) -> Path | None:
    """Test accuracy against epoch and against seconds, one row of panels per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = common.new_figure(figsize=(12, 4.2 * len(models)), layout="constrained")
    if fig is None:
        return None
    axes = np.atleast_2d(fig.subplots(len(models), 2))
    for (ax_e, ax_t), model in zip(axes, models, strict=True):
        for i, r in enumerate(x for x in rows if x["model"] == model):
            tr = r["trace"]
            ax_e.plot(tr["epochs"], tr["test_accuracy"], ".-", color=f"C{i}", label=r["method"])
            s, a = np.asarray(tr["seconds"]), np.asarray(tr["test_accuracy"])
            ax_t.plot(s[s > 0], a[s > 0], ".-", color=f"C{i}", label=r["method"])
        for ax in (ax_e, ax_t):
            for target in TARGETS:
                ax.axhline(target, color="gray", lw=0.8, ls="--")
            ax.set_ylim(0.9, 1.0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small", loc="lower right")
            ax.set_ylabel("test accuracy")
        ax_e.set(xlabel="epoch", title=f"{model}: test accuracy against epoch")
        ax_t.set(xlabel="training seconds", xscale="log", title=f"{model}: against time")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table; write ``OUT/kfac.json`` and ``OUT/kfac.png``."""
    from natgrad import demo

    quick = bool(args.quick)
    train_size, test_size = mnist_mlp.data_sizes(args, QUICK)
    epochs = args.epochs or (QUICK["epochs"] if quick else DEFAULT_EPOCHS)
    models = _subset(args.models, MODELS, "models")
    methods = _subset(args.methods, METHODS, "methods")
    try:
        kfac_settings = json.loads(args.kfac_settings)
    except json.JSONDecodeError as err:
        raise SystemExit(f"natgrad bench kfac: --kfac-settings is not JSON: {err}") from None
    if epochs < 1 or args.batch_size < 1 or args.eval_every < 1:
        raise SystemExit("natgrad bench kfac: --epochs, --batch-size and --eval-every must be ≥ 1")
    data, path = mnist_mlp.load_mnist(args.mnist, train_size=train_size, test_size=test_size)
    steps_per_epoch = data.x_train.shape[0] // args.batch_size
    if steps_per_epoch < 1:
        raise SystemExit("natgrad bench kfac: fewer training examples than the batch size")
    python, kfac_jax_status = kfac_jax_python(args.kfac_jax_python)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "quick": quick,
        "data": str(path),
        "train_size": int(data.x_train.shape[0]),
        "test_size": int(data.x_test.shape[0]),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "models": models,
        "methods": methods,
        "dtype": "float32",
        "loss": "mean softmax cross-entropy",
        "natgrad_kfac_settings": kfac_settings or "natgrad.kfac defaults",
        "kfac_jax_settings": KFAC_JAX_SETTINGS,
        "timing": "natgrad_kfac, sgd and adam interleaved step by step (jitted, params and state "
        "donated, compiled before the clock); kfac_jax timed alone in its own process",
        "kfac_jax": {"python": python, "status": kfac_jax_status},
    }
    in_process = {m: ({} if m != "natgrad_kfac" else kfac_settings) for m in methods}
    in_process.pop("kfac_jax", None)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with common.jax_x64(False):
        environment = common.environment_info()
        with demo.progress(not args.no_progress) as bar:
            for model in models:
                init, _ = MODEL_FUNCTIONS[model]
                params0 = init(jax.random.PRNGKey(args.seed))
                if in_process:
                    task = bar.add_task(f"{model} steps", total=epochs * steps_per_epoch)
                    rows += train_in_process(
                        model,
                        in_process,
                        params0,
                        data,
                        epochs=epochs,
                        batch_size=args.batch_size,
                        seed=args.seed,
                        eval_every=args.eval_every,
                        progress=functools.partial(bar.advance, task),
                    )
                if "kfac_jax" in methods and python is not None:
                    row, status = run_kfac_jax(
                        python,
                        model,
                        params0,
                        data,
                        epochs=epochs,
                        batch_size=args.batch_size,
                        seed=args.seed,
                        eval_every=args.eval_every,
                        settings=KFAC_JAX_SETTINGS,
                    )
                    config["kfac_jax"][model] = status
                    if row is not None:
                        rows.append(row)
    config["wall_seconds"] = time.perf_counter() - start
    config["load_average_end"] = common.load_average()
    if "kfac_jax" in methods and python is None:
        print(f"kfac_jax skipped: {kfac_jax_status}", file=sys.stderr)
    payload = {
        "benchmark": BENCHMARK,
        "config": config,
        "versions": environment["versions"],
        "machine": environment["machine"],
        "summary": summarize(rows),
        "results": rows,
    }
    json_path = common.write_json(out / f"{BENCHMARK}.json", payload)
    title = f"MNIST, batch {args.batch_size}, {epochs} epoch(s), {data.x_train.shape[0]} train"
    print_table(rows, title)
    for model, ratios in payload["summary"].items():
        shown = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in ratios.items()
        )
        print(f"{model}: {shown}")
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = plot(out / f"{BENCHMARK}.png", rows, title)
        print(f"wrote {png}" if png else "matplotlib is not installed: no plot")
    print(f"total time {config['wall_seconds']:.1f} s", file=sys.stderr)
    return 0
