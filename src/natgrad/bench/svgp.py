"""Benchmark: sparse variational GPs trained by natural gradients plus Adam against Adam alone.

Five data sets, each an :class:`natgrad.gp.SVGP` trained from one initialization by

* ``ng_adam``: :func:`natgrad.gp.hybrid` with natural steps on q(u) (γ = 1 for a Gaussian
  likelihood, which is exact in the conjugate case, else the warm-up
  ``log_linear_warmup(1e-4, 0.1, 5)``) and Adam(0.01) on the kernel, likelihood and inducing
  inputs, in ``--mode`` (``joint`` by default: one backward pass per step);
* ``ng_adam_alternating``: the same in the other mode (``alternating``: the natural step, then
  the other parameters' gradient again at the updated q, Salimbeni et al. 2018 and GPflow's
  practice; two backward passes), except on MNIST;
* ``adam``: Adam(0.01) on everything, q(u)'s mean and Cholesky factor included.

The data sets:

* ``regression_1d``: synthetic 1-D regression, N = 2000, M = 50 inducing inputs evenly spaced,
  the kernel, noise and inducing inputs fixed (the conjugate case: the ELBO's optimum over q is
  the collapsed SGPR bound, and one natural step with γ = 1 reaches it; ``adam`` trains q
  only); ``one_step_gap`` is |ELBO after one γ = 1 step − SGPR bound| / |SGPR bound|;
* ``diabetes``: scikit-learn's diabetes regression (442 rows, 10 features, x and y standardized
  with training statistics, 20% held out), M = 50 training rows, everything trained; the
  reference is the SGPR bound maximized over the hyperparameters and inducing inputs (L-BFGS);
* ``breast_cancer``: the Wisconsin breast-cancer data (:func:`natgrad.data.load_breast_cancer`,
  bias column dropped), Bernoulli (probit), M = 100 training rows, everything trained;
* ``student_t``: synthetic 1-D regression, N = 1000, 8% of the targets replaced by outliers,
  a Student-t likelihood (ν = 3), M = 30, everything trained; test RMSE on clean targets;
* ``mnist``: MNIST with the softmax likelihood (10 latents), M = 100 inducing inputs from
  k-means (MiniBatchKMeans on 10000 training images), a squared-exponential kernel with ARD
  lengthscales, minibatches of 1024, inputs /255; γ decays as γ/(1 + t/1000) after the
  warm-up, and both methods' Adam rate as 0.01/(1 + t/3000) (constant rates stop at the
  minibatch noise floor). Read from ``--mnist PATH`` or ``$NATGRAD_MNIST``
  (an npz with x_train (60000, 28, 28), y_train, x_test, y_test); skipped when absent.

Every step is jit-compiled inside a ``jax.lax.scan`` chunk; each method's chunk is compiled and
run once on the initial state before the clock starts, then the methods run chunk by chunk in
alternation (the order reversed every chunk) so that they share the machine's load. Seconds per
iteration are the median over chunks of chunk seconds / chunk length. The ELBO is recorded
before every step (the value ``jax.value_and_grad`` gives); on the full-batch sets it is exact.
On MNIST the per-step values are minibatch estimates, so the full-data ELBO and the test
accuracy are evaluated every ``eval_every`` iterations outside the timed region, and the
target there is the best full ELBO minus 1% of its magnitude (1 nat is below the resolution of a
60000-point ELBO's few checkpoints).

Run it as ``natgrad bench svgp [--quick] [--mnist PATH] --out DIR``; it writes
``DIR/svgp.json`` and ``DIR/svgp.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from natgrad.bench import common

BENCHMARK = "svgp"
ENV_VAR = "NATGRAD_MNIST"
#: Nats below the best ELBO found that count as "reached" (full-batch data sets).
TOLERANCE = 1.0
#: MNIST's tolerance as a fraction of |best full-data ELBO|.
MNIST_RELATIVE_TOLERANCE = 0.01
MNIST_ACCURACY_TARGET = 0.97
ADAM_LR = 0.01
WARMUP = (1e-4, 0.1, 5)
DEFAULT_MODE = "joint"
DATASETS = ("regression_1d", "diabetes", "breast_cancer", "student_t", "mnist")
#: Iterations per data set: (full, --quick).
ITERATIONS = {
    "regression_1d": (3000, 300),
    "diabetes": (3000, 300),
    "breast_cancer": (3000, 300),
    "student_t": (3000, 300),
    "mnist": (10000, 300),
}
CHUNK_SIZE = {"full": 100, "quick": 50}
MNIST = {
    "inducing": 100,
    "batch_size": 1024,
    "kmeans_subset": 10_000,
    "eval_every": 500,
    "lengthscale": 10.0,
    "variance": 5.0,
    "softmax_samples": 64,
    # τ of ng_adam's γₜ = warm-up(t)/(1 + t/τ) on MNIST: at a constant γ = 0.1 the minibatch
    # steps (batches of 256: N/B = 234) stop at a noise floor after ~2000 iterations
    # (benchmarks/README.md).
    "gamma_decay_steps": 1000,
    # τ of both methods' Adam rate 0.01/(1 + t/τ) on MNIST: at a constant 0.01 the inducing
    # inputs' minibatch noise holds the full ELBO ~1000 nats lower after 10000 iterations.
    "adam_decay_steps": 3000,
    "quick_train_size": 10_000,
    "quick_test_size": 2_000,
    "quick_eval_every": 100,
}
GOALS = {
    "iterations_ratio_min": 10.0,
    "seconds_per_iteration_ratio_max": 1.2,
    "mnist_test_accuracy_min": MNIST_ACCURACY_TARGET,
}

DESCRIPTION = f"""\
Sparse variational GPs (natgrad.gp.SVGP) trained by natural gradients on q(u) plus Adam on the
rest against Adam alone, on five data sets, ELBO against iteration and against seconds:

  regression_1d   synthetic 1-D, N = 2000, M = 50, hyperparameters fixed (conjugate: one γ = 1
                  natural step reaches the SGPR bound; one_step_gap is the relative gap)
  diabetes        scikit-learn's diabetes regression, M = 50, all trained; SGPR optimum as
                  the reference
  breast_cancer   Wisconsin breast cancer, Bernoulli (probit), M = 100, all trained
  student_t       synthetic 1-D with 8% outliers, Student-t likelihood, M = 30, all trained
  mnist           softmax multiclass, ARD squared exponential, M = {MNIST["inducing"]}
                  (k-means), batches of {MNIST["batch_size"]}; from --mnist PATH or
                  ${ENV_VAR}, skipped when neither is given

Methods:
  ng_adam              natural steps on q(u) (γ = 1 for a Gaussian likelihood, else the
                       warm-up γ = {WARMUP[0]:g} → {WARMUP[1]:g} over {WARMUP[2]} steps;
                       MNIST: then γ/(1 + t/{MNIST["gamma_decay_steps"]}))
                       + Adam({ADAM_LR:g}) on the rest, --mode (default {DEFAULT_MODE})
  ng_adam_alternating  the same in the other mode (not on MNIST)
  adam                 Adam({ADAM_LR:g}) on everything
  (MNIST: both methods' Adam rate decays as {ADAM_LR:g}/(1 + t/{MNIST["adam_decay_steps"]}))

Steps are jit-compiled in lax.scan chunks, compiled before timing; the methods run chunk by chunk
in alternation. Per data set and method: iterations and seconds to within {TOLERANCE:g} nat of the
best ELBO found (MNIST: {MNIST_RELATIVE_TOLERANCE:.0%} of it, on full-data ELBOs every few hundred
iterations), median seconds per iteration, final ELBO, a test metric, and the ratios adam/ng_adam of
iterations to target and ng_adam/adam of seconds per iteration.

Writes OUT/svgp.json ({{"benchmark", "config", "versions", "machine", "results"}}) and, with
matplotlib, OUT/svgp.png.

Example:  OPENBLAS_NUM_THREADS=1 natgrad bench svgp --out results/            (~10 min, no MNIST)
          natgrad bench svgp --quick --mnist mnist.npz --out /tmp/svgp       (a few minutes)
"""


# --------------------------------------------------------------------------------------------
# Problems.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """One data set with its model, initial parameters, methods and test metric."""

    name: str
    model: Any
    params: dict
    x: Any
    y: Any
    x_test: Any
    y_test: Any
    methods: dict[str, Any]
    iterations: int
    chunk_size: int
    metric_name: str
    metric: Callable[[dict], float]
    info: dict
    batch_size: int | None = None
    eval_every: int | None = None
    conjugate: bool = False
    #: params -> the collapsed SGPR bound at params' hyperparameters (Gaussian likelihoods).
    sgpr: Callable[[dict], float] | None = None
    sgpr_optimum: float | None = None
    #: ng_adam's mode (the ng_adam_<mode> row has the other one).
    mode: str = DEFAULT_MODE


def _methods(
    natural_lr,
    mode: str,
    *,
    fixed_hyperparameters: bool,
    alternating_row: bool,
    learning_rate=ADAM_LR,
):
    """name → hybrid transformation: ng_adam (mode), ng_adam_alternating (other mode), adam.

    ``learning_rate`` (a float or an optax schedule) is Adam's, the same in every method."""
    import jax
    import optax

    from natgrad.gp import hybrid

    if fixed_hyperparameters:
        other = optax.set_to_zero()

        def labels(params):
            return {k: jax.tree.map(lambda _, k=k: k == "q", v) for k, v in params.items()}

        adam = optax.multi_transform(
            {True: optax.adam(learning_rate), False: optax.set_to_zero()}, labels
        )
    else:
        other = optax.adam(learning_rate)
        adam = optax.adam(learning_rate)
    methods = {"ng_adam": hybrid(natural_lr, other, mode=mode)}
    if alternating_row:
        other_mode = "alternating" if mode == "joint" else "joint"
        methods[f"ng_adam_{other_mode}"] = hybrid(natural_lr, other, mode=other_mode)
    methods["adam"] = hybrid(None, adam)
    return methods


def _mode_of(method: str, mode: str) -> str | None:
    if method == "ng_adam":
        return mode
    if method.startswith("ng_adam_"):
        return method.removeprefix("ng_adam_")
    return None


def _rmse(model, params, x, y) -> float:
    mean, _ = model.predict_y(params, x)
    return float(np.sqrt(np.mean(np.square(np.asarray(mean)[:, 0] - np.asarray(y)))))


def _sgpr_fn(model, x, y):
    import jax

    from natgrad.gp import sgpr_bound

    @jax.jit
    def bound(params):
        noise = model.likelihood.hyperparameters(params["likelihood"])["variance"]
        return sgpr_bound(
            model.kernel,
            params["kernel"],
            noise,
            x,
            y,
            params["inducing_inputs"],
            jitter=model.jitter,
        )

    return lambda params: float(bound(params))


def _sgpr_optimum(model, params, x, y, iterations: int) -> float:
    """max over kernel, noise and inducing inputs of the collapsed bound, by L-BFGS."""
    import jax
    import optax

    from natgrad.gp import sgpr_bound

    def loss(rest):
        noise = model.likelihood.hyperparameters(rest["likelihood"])["variance"]
        return -sgpr_bound(
            model.kernel, rest["kernel"], noise, x, y, rest["inducing_inputs"], jitter=model.jitter
        )

    rest = {k: v for k, v in params.items() if k != "q"}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def run(rest):
        def step(carry, _):
            p, s = carry
            value, grad = value_and_grad(p, state=s)
            updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=loss)
            return (optax.apply_updates(p, updates), s), value

        (p, _), values = jax.lax.scan(step, (rest, opt.init(rest)), None, length=iterations)
        return loss(p), values

    final, values = run(rest)
    values = np.asarray(values)
    best = -min(float(final), float(np.nanmin(values)) if np.isfinite(values).any() else math.inf)
    return best


def _regression_1d(config: dict, rng: np.random.Generator) -> Problem:
    import jax.numpy as jnp

    from natgrad.gp import SVGP, kernels, likelihoods

    n, n_test, m, noise = 2000, 500, 50, 0.1

    def f(x):
        return np.sin(3 * x) + 0.5 * np.cos(7 * x) + 0.3 * x

    x = rng.uniform(-3, 3, (n, 1))
    x_test = rng.uniform(-3, 3, (n_test, 1))
    y = f(x[:, 0]) + np.sqrt(noise) * rng.standard_normal(n)
    y_test = f(x_test[:, 0]) + np.sqrt(noise) * rng.standard_normal(n_test)
    z = np.linspace(-3, 3, m)[:, None]
    kernel = kernels.SquaredExponential(lengthscale=0.5, variance=1.0)
    model = SVGP(kernel, likelihoods.Gaussian(variance=noise))
    params = model.init(jnp.asarray(z))
    x, y, x_test, y_test = (jnp.asarray(a) for a in (x, y, x_test, y_test))
    sgpr = _sgpr_fn(model, x, y)
    return Problem(
        name="regression_1d",
        model=model,
        params=params,
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        methods=_methods(1.0, config["mode"], fixed_hyperparameters=True, alternating_row=True),
        iterations=config["iterations"]["regression_1d"],
        chunk_size=config["chunk_size"],
        metric_name="test_rmse",
        metric=lambda p: _rmse(model, p, x_test, y_test),
        conjugate=True,
        sgpr=sgpr,
        sgpr_optimum=sgpr(params),
        info={
            "data": "y = sin 3x + ½cos 7x + 0.3x + N(0, 0.1), x ~ U(−3, 3)",
            "train_size": n,
            "test_size": n_test,
            "num_inducing": m,
            "inducing_inputs": "evenly spaced on [−3, 3], fixed",
            "likelihood": f"Gaussian, variance {noise:g} (fixed)",
            "kernel": "squared exponential, lengthscale 0.5, variance 1 (fixed)",
            "trained": "q(u) only",
            "natural_learning_rate": 1.0,
            "reference": "SGPR (Titsias) bound at the fixed hyperparameters = the optimum over q",
        },
    )


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def _diabetes(config: dict, rng: np.random.Generator) -> Problem:
    import jax.numpy as jnp
    from sklearn import datasets

    from natgrad.gp import SVGP, default_natural_learning_rate, kernels, likelihoods

    raw = datasets.load_diabetes()
    n_all = raw.data.shape[0]
    order = rng.permutation(n_all)
    n_test = round(0.2 * n_all)
    test, train = order[:n_test], order[n_test:]
    x, x_test = _standardize(raw.data[train], raw.data[test])
    y, y_test = _standardize(raw.target[train][:, None], raw.target[test][:, None])
    y, y_test = y[:, 0], y_test[:, 0]
    m = 50
    z = x[rng.choice(len(train), m, replace=False)]
    dim = x.shape[1]
    kernel = kernels.SquaredExponential(lengthscale=math.sqrt(dim), variance=1.0)
    model = SVGP(kernel, likelihoods.Gaussian(variance=0.5))
    params = model.init(jnp.asarray(z))
    x, y, x_test, y_test = (jnp.asarray(a) for a in (x, y, x_test, y_test))
    lbfgs_iterations = 100 if config["quick"] else 500
    return Problem(
        name="diabetes",
        model=model,
        params=params,
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        methods=_methods(
            default_natural_learning_rate(model),
            config["mode"],
            fixed_hyperparameters=False,
            alternating_row=True,
        ),
        iterations=config["iterations"]["diabetes"],
        chunk_size=config["chunk_size"],
        metric_name="test_rmse",
        metric=lambda p: _rmse(model, p, x_test, y_test),
        sgpr=_sgpr_fn(model, x, y),
        sgpr_optimum=_sgpr_optimum(model, params, x, y, lbfgs_iterations),
        info={
            "data": "sklearn.datasets.load_diabetes; x and y standardized with training "
            "statistics; test RMSE in standard deviations of y",
            "train_size": len(train),
            "test_size": int(n_test),
            "num_inducing": m,
            "inducing_inputs": "a random subset of the training rows, trained",
            "likelihood": "Gaussian, initial variance 0.5 (trained)",
            "kernel": f"squared exponential ARD, initial lengthscale √{dim}, variance 1 (trained)",
            "trained": "everything",
            "natural_learning_rate": 1.0,
            "reference": f"SGPR bound maximized over kernel, noise and inducing inputs by "
            f"{lbfgs_iterations} L-BFGS iterations (optax.lbfgs) from the same start",
        },
    )


def _breast_cancer(config: dict, rng: np.random.Generator) -> Problem:
    import jax.numpy as jnp

    from natgrad.data import load_breast_cancer
    from natgrad.gp import SVGP, kernels, likelihoods

    data = load_breast_cancer(seed=config["seed"])
    x, x_test = data.x_train[:, :-1], data.x_test[:, :-1]  # the bias column is no GP input
    m = min(100, x.shape[0])
    z = x[rng.choice(x.shape[0], m, replace=False)]
    dim = x.shape[1]
    kernel = kernels.SquaredExponential(lengthscale=math.sqrt(dim), variance=1.0)
    model = SVGP(kernel, likelihoods.Bernoulli("probit"))
    params = model.init(jnp.asarray(z))
    y = jnp.asarray(data.y_train, jnp.float64)
    y_test = np.asarray(data.y_test)
    x, x_test = jnp.asarray(x), jnp.asarray(x_test)

    def accuracy(p):
        mean, _ = model.predict_y(p, x_test)
        return float(np.mean((np.asarray(mean)[:, 0] > 0.5) == (y_test == 1)))

    return Problem(
        name="breast_cancer",
        model=model,
        params=params,
        x=x,
        y=y,
        x_test=x_test,
        y_test=jnp.asarray(y_test, jnp.float64),
        methods=_methods(
            _warmup(), config["mode"], fixed_hyperparameters=False, alternating_row=True
        ),
        iterations=config["iterations"]["breast_cancer"],
        chunk_size=config["chunk_size"],
        metric_name="test_accuracy",
        metric=accuracy,
        info={
            "data": "natgrad.data.load_breast_cancer(seed) without its bias column (30 "
            "standardized features)",
            "train_size": int(x.shape[0]),
            "test_size": int(x_test.shape[0]),
            "num_inducing": m,
            "inducing_inputs": "a random subset of the training rows, trained",
            "likelihood": "Bernoulli, probit link",
            "kernel": f"squared exponential ARD, initial lengthscale √{dim}, variance 1 (trained)",
            "trained": "everything",
            "natural_learning_rate": f"log_linear_warmup{WARMUP}",
        },
    )


def _student_t(config: dict, rng: np.random.Generator) -> Problem:
    import jax.numpy as jnp

    from natgrad.gp import SVGP, kernels, likelihoods

    n, n_test, m, noise, fraction = 1000, 500, 30, 0.05, 0.08

    def f(x):
        return np.sin(2 * x) + 0.4 * x

    x = rng.uniform(-3, 3, (n, 1))
    y = f(x[:, 0]) + math.sqrt(noise) * rng.standard_normal(n)
    outliers = rng.choice(n, round(fraction * n), replace=False)
    y[outliers] += rng.choice([-1.0, 1.0], len(outliers)) * rng.uniform(2, 6, len(outliers))
    x_test = rng.uniform(-3, 3, (n_test, 1))
    y_test = f(x_test[:, 0]) + math.sqrt(noise) * rng.standard_normal(n_test)  # clean
    z = np.linspace(-3, 3, m)[:, None]
    kernel = kernels.SquaredExponential(lengthscale=1.0, variance=1.0)
    model = SVGP(kernel, likelihoods.StudentT(df=3.0, scale=0.5))
    params = model.init(jnp.asarray(z))
    x, y, x_test, y_test = (jnp.asarray(a) for a in (x, y, x_test, y_test))
    return Problem(
        name="student_t",
        model=model,
        params=params,
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        methods=_methods(
            _warmup(), config["mode"], fixed_hyperparameters=False, alternating_row=True
        ),
        iterations=config["iterations"]["student_t"],
        chunk_size=config["chunk_size"],
        metric_name="test_rmse_clean",
        metric=lambda p: _rmse(model, p, x_test, y_test),
        info={
            "data": f"y = sin 2x + 0.4x + N(0, {noise:g}), x ~ U(−3, 3), {fraction:.0%} of the "
            "training targets shifted by ±U(2, 6); test targets without outliers",
            "train_size": n,
            "test_size": n_test,
            "num_inducing": m,
            "inducing_inputs": "evenly spaced on [−3, 3], trained",
            "likelihood": "Student-t, ν = 3, initial scale 0.5 (trained)",
            "kernel": "squared exponential, initial lengthscale 1, variance 1 (trained)",
            "trained": "everything",
            "natural_learning_rate": f"log_linear_warmup{WARMUP}",
            "reference": "none (no collapsed bound for a Student-t likelihood)",
        },
    )


def _warmup(final: float | None = None):
    from natgrad.schedules import log_linear_warmup

    initial, default_final, steps = WARMUP
    return log_linear_warmup(initial, default_final if final is None else final, steps)


def load_mnist_npz(path: Path, *, train_size: int | None, test_size: int | None):
    """(x_train, y_train, x_test, y_test): inputs (N, 784) float64 in [0, 1], labels int32."""
    how = (
        f"give an MNIST npz (x_train (N, 28, 28) uint8, y_train, x_test, y_test) with --mnist "
        f"PATH or {ENV_VAR}=PATH"
    )
    if not path.is_file():
        raise SystemExit(f"natgrad bench svgp: {path} does not exist: {how}")
    with np.load(path) as raw:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(raw.files)
        if missing:
            raise SystemExit(
                f"natgrad bench svgp: {path} lacks {', '.join(sorted(missing))}: {how}"
            )
        arrays = {k: raw[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    out = []
    for part, size in (("train", train_size), ("test", test_size)):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != x.shape[:1]:
            raise SystemExit(
                f"natgrad bench svgp: {path}: x_{part} must be (N, 28, 28) with y_{part} (N,), "
                f"got {x.shape} and {y.shape}"
            )
        if size is not None:
            x, y = x[:size], y[:size]
        out += [x.reshape(x.shape[0], -1).astype(np.float64) / 255.0, y.astype(np.int32)]
    return tuple(out)


def _mnist(config: dict, rng: np.random.Generator, path: Path) -> Problem:
    import jax
    import jax.numpy as jnp
    from sklearn.cluster import MiniBatchKMeans

    from natgrad.gp import SVGP, kernels, likelihoods
    from natgrad.schedules import inverse_time_decay

    mc = config["mnist"]
    x, y, x_test, y_test = load_mnist_npz(
        path, train_size=mc["train_size"], test_size=mc["test_size"]
    )
    m = mc["inducing"]
    subset = x[rng.choice(x.shape[0], min(MNIST["kmeans_subset"], x.shape[0]), replace=False)]
    if m > subset.shape[0]:
        raise SystemExit(
            f"natgrad bench svgp: --mnist-inducing {m} is more than the {subset.shape[0]} "
            "images k-means sees"
        )
    start = time.perf_counter()
    kmeans = MiniBatchKMeans(
        n_clusters=m, n_init=3, random_state=config["seed"], batch_size=2048
    ).fit(subset)
    kmeans_seconds = time.perf_counter() - start
    kernel = kernels.SquaredExponential(
        lengthscale=MNIST["lengthscale"], variance=MNIST["variance"], ard=True
    )
    likelihood = likelihoods.Softmax(10, num_samples=MNIST["softmax_samples"])
    model = SVGP(kernel, likelihood)
    params = model.init(jnp.asarray(kmeans.cluster_centers_, jnp.float64))
    batch = min(mc["batch_size"], x.shape[0])
    x, y = jnp.asarray(x), jnp.asarray(y)
    x_test_j, y_test_np = jnp.asarray(x_test), np.asarray(y_test)

    @jax.jit
    def predict_class(p, xs):
        mean, var = model.predict_f(p, xs)
        return jnp.argmax(model.likelihood.predict_class_probabilities({}, mean, var), axis=1)

    def accuracy(p):
        labels = [
            np.asarray(predict_class(p, x_test_j[i : i + 1000]))
            for i in range(0, x_test_j.shape[0], 1000)
        ]
        return float(np.mean(np.concatenate(labels) == y_test_np))

    return Problem(
        name="mnist",
        model=model,
        params=params,
        x=x,
        y=y,
        x_test=x_test_j,
        y_test=jnp.asarray(y_test),
        methods=_methods(
            inverse_time_decay(_warmup(), MNIST["gamma_decay_steps"]),
            config["mode"],
            fixed_hyperparameters=False,
            alternating_row=False,
            learning_rate=inverse_time_decay(ADAM_LR, MNIST["adam_decay_steps"]),
        ),
        iterations=config["iterations"]["mnist"],
        chunk_size=config["chunk_size"],
        metric_name="test_accuracy",
        metric=accuracy,
        batch_size=batch,
        eval_every=mc["eval_every"],
        info={
            "data": str(path),
            "train_size": int(x.shape[0]),
            "test_size": int(x_test.shape[0]),
            "num_inducing": m,
            "inducing_inputs": f"MiniBatchKMeans(n_clusters={m}, n_init=3) centres of "
            f"{subset.shape[0]} random training images ({kmeans_seconds:.1f} s), trained",
            "likelihood": f"Softmax, 10 classes, {likelihood.num_samples} quasi-Monte Carlo "
            "nodes (Price's theorem for the variance gradient)",
            "kernel": f"squared exponential, 784 ARD lengthscales (initial "
            f"{MNIST['lengthscale']:g}), variance (initial {MNIST['variance']:g}), trained",
            "inputs": "pixels / 255",
            "batch_size": batch,
            "trained": "everything",
            "natural_learning_rate": f"inverse_time_decay(log_linear_warmup{WARMUP}, "
            f"decay_steps={MNIST['gamma_decay_steps']})",
            "adam_learning_rate": f"{ADAM_LR:g}/(1 + t/{MNIST['adam_decay_steps']}) in both "
            "methods",
            "eval_every": mc["eval_every"],
            "target": f"best full-data ELBO − {MNIST_RELATIVE_TOLERANCE:.0%} of its magnitude, "
            "on the ELBOs evaluated every eval_every iterations",
        },
    )


# --------------------------------------------------------------------------------------------
# Training: all methods of a problem, chunk by chunk in alternation.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One method's run: the ELBO before each step and after the last, and the chunk times."""

    name: str
    values: np.ndarray
    chunk_lengths: list[int]
    chunk_seconds: list[float]
    compile_seconds: float
    params: dict
    num_rejected: int
    evaluations: list[dict] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> np.ndarray:
        """Cumulative seconds after t steps, t = 0..T (a chunk's time spread evenly)."""
        out = [0.0]
        elapsed = 0.0
        for n, dt in zip(self.chunk_lengths, self.chunk_seconds, strict=True):
            out.extend(elapsed + dt * (k + 1) / n for k in range(n))
            elapsed += dt
        return np.asarray(out)

    @property
    def seconds_per_iteration(self) -> float:
        return statistics.median(
            dt / n for n, dt in zip(self.chunk_lengths, self.chunk_seconds, strict=True)
        )


def _chunk_fn(model, tx, num_data: int, batched: bool):
    import jax
    import optax

    def loss_fn(p, xb, yb):
        return -model.elbo(p, xb, yb, num_data=num_data)

    def step(x, y, carry, idx):
        p, s = carry
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, s = tx.update(grads, s, p, value_fn=lambda q: loss_fn(q, xb, yb))
        return (optax.apply_updates(p, updates), s), -loss

    if batched:

        @jax.jit
        def chunk(carry, x, y, indices):
            return jax.lax.scan(lambda c, i: step(x, y, c, i), carry, indices)

        return chunk

    @functools.partial(jax.jit, static_argnums=3)
    def chunk(carry, x, y, length):
        return jax.lax.scan(lambda c, _: step(x, y, c, None), carry, None, length=length)

    return chunk


def full_elbo(model, params, x, y, *, batch: int = 1000) -> float:
    """The ELBO on all of (x, y), the data term summed in batches of ``batch`` rows."""
    import jax

    ell = jax.jit(model.expected_log_likelihood)
    total = 0.0
    for i in range(0, x.shape[0], batch):
        total += float(ell(params, x[i : i + batch], y[i : i + batch]))
    return total - float(jax.jit(model.prior_kl)(params))


def train(problem: Problem, *, seed: int, on_chunk: Callable[[int], None] | None = None):
    """Run every method of ``problem``; returns name → :class:`Run`."""
    import jax

    model, x, y = problem.model, problem.x, problem.y
    num_data = int(x.shape[0])
    batched = problem.batch_size is not None
    total, size = problem.iterations, problem.chunk_size
    lengths = [size] * (total // size) + ([total % size] if total % size else [])
    order_rng = np.random.default_rng(seed)
    indices = None
    if batched:
        need = total * problem.batch_size
        perms = [order_rng.permutation(num_data) for _ in range(need // num_data + 1)]
        indices = np.concatenate(perms)[:need].reshape(total, problem.batch_size).astype(np.int32)

    def chunk_indices(start: int, n: int):
        return None if indices is None else jax.numpy.asarray(indices[start : start + n])

    names = list(problem.methods)
    fns, carries, runs = {}, {}, {}
    for name, tx in problem.methods.items():
        fn = _chunk_fn(model, tx, num_data, batched)
        carry = (problem.params, tx.init(problem.params))
        start = time.perf_counter()
        for n in sorted(set(lengths)):  # compile and warm up; results discarded
            arg = chunk_indices(0, n) if batched else n
            jax.block_until_ready(fn(carry, x, y, arg))
        fns[name], carries[name] = fn, carry
        runs[name] = Run(name, np.empty(0), [], [], time.perf_counter() - start, {}, 0)
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def evaluate(done: int) -> None:
        for name in names:
            params = carries[name][0]
            runs[name].evaluations.append(
                {
                    "iteration": done,
                    "elbo": full_elbo(model, params, x, y),
                    problem.metric_name: problem.metric(params),
                }
            )

    if problem.eval_every:
        evaluate(0)
    done = 0
    for c, n in enumerate(lengths):
        for name in names if c % 2 == 0 else reversed(names):
            arg = chunk_indices(done, n) if batched else n
            t0 = time.perf_counter()
            carry, chunk_values = fns[name](carries[name], x, y, arg)
            jax.block_until_ready((carry, chunk_values))
            runs[name].chunk_seconds.append(time.perf_counter() - t0)
            runs[name].chunk_lengths.append(n)
            carries[name] = carry
            values[name].append(np.asarray(chunk_values, dtype=np.float64))
        done += n
        if problem.eval_every and (done % problem.eval_every == 0 or done == total):
            evaluate(done)
        if on_chunk is not None:
            on_chunk(n)
    for name in names:
        params, state = carries[name]
        final = full_elbo(model, params, x, y)
        runs[name].values = np.concatenate([*values[name], [final]])
        runs[name].params = params
        runs[name].num_rejected = int(state.num_rejected)
    return runs


# --------------------------------------------------------------------------------------------
# Summaries.
# --------------------------------------------------------------------------------------------


def _first_reach(values: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(np.isfinite(values) & (values >= target))
    return int(hits[0]) if hits.size else None


def _subsample(n: int, most: int = 400) -> np.ndarray:
    """Indices 0..n−1: all of the first 50, then about ``most`` spread geometrically."""
    if n <= most:
        return np.arange(n)
    geo = np.unique(np.round(np.geomspace(50, n - 1, most - 50)).astype(int))
    return np.unique(np.concatenate([np.arange(50), geo, [n - 1]]))


def summarize(problem: Problem, runs: dict[str, Run]) -> list[dict]:
    """One row per method of ``problem`` (see the module docstring for the fields)."""
    minibatch = problem.eval_every is not None
    if minibatch:
        curves = {
            name: (
                np.asarray([e["iteration"] for e in run.evaluations]),
                np.asarray([e["elbo"] for e in run.evaluations]),
            )
            for name, run in runs.items()
        }
    else:
        curves = {name: (np.arange(len(run.values)), run.values) for name, run in runs.items()}
    finite = [v for _, vals in curves.values() for v in vals[np.isfinite(vals)]]
    best = max(finite) if finite else math.nan
    tolerance = MNIST_RELATIVE_TOLERANCE * abs(best) if minibatch else TOLERANCE
    target = best - tolerance
    rows = []
    for name, run in runs.items():
        its, vals = curves[name]
        hit = _first_reach(vals, target)
        iteration = None if hit is None else int(its[hit])
        seconds = run.seconds
        row = {
            "dataset": problem.name,
            "method": name,
            "mode": _mode_of(name, problem.mode),
            "iterations": problem.iterations,
            "iterations_to_target": iteration,
            "seconds_to_target": None if iteration is None else float(seconds[iteration]),
            "seconds_per_iteration": run.seconds_per_iteration,
            "seconds_per_iteration_min": min(
                dt / n for n, dt in zip(run.chunk_lengths, run.chunk_seconds, strict=True)
            ),
            "final_elbo": float(run.values[-1]),
            "best_elbo": best,
            "target_elbo": target,
            "tolerance": tolerance,
            "test_metric_name": problem.metric_name,
            "test_metric": problem.metric(run.params),
            "test_mean_log_predictive_density": _mean_lpd_batched(
                problem.model, run.params, problem.x_test, problem.y_test
            ),
            "compile_seconds": run.compile_seconds,
            "total_seconds": float(seconds[-1]),
            "num_rejected": run.num_rejected,
        }
        if problem.sgpr is not None:
            row["sgpr_reference"] = problem.sgpr_optimum
            row["sgpr_bound_at_final_hyperparameters"] = problem.sgpr(run.params)
        if problem.conjugate and name == "ng_adam":
            ref = problem.sgpr_optimum
            row["one_step_gap"] = abs(float(run.values[1]) - ref) / abs(ref)
        if minibatch:
            row["evaluations"] = run.evaluations
            acc_hit = [
                e["iteration"]
                for e in run.evaluations
                if e.get("test_accuracy", -1) >= MNIST_ACCURACY_TARGET
            ]
            row["iterations_to_accuracy_target"] = acc_hit[0] if acc_hit else None
            row["seconds_to_accuracy_target"] = float(seconds[acc_hit[0]]) if acc_hit else None
        keep = _subsample(len(run.values))
        row["trace"] = {
            "iteration": keep,
            "elbo": run.values[keep],
            "seconds": seconds[keep],
            "minibatch_estimates": minibatch,
        }
        rows.append(row)
    by_name = {row["method"]: row for row in rows}
    adam = by_name.get("adam")
    for row in rows:
        if row["method"] == "adam" or adam is None:
            continue
        ng_its, adam_its = row["iterations_to_target"], adam["iterations_to_target"]
        if ng_its is not None and adam_its is not None:
            ratio, bound = adam_its / max(ng_its, 1), "exact"
        elif ng_its is not None:  # Adam never got there: its budget gives a lower bound
            ratio, bound = problem.iterations / max(ng_its, 1), "lower bound"
        else:
            ratio, bound = None, None
        row["iterations_ratio_adam_over_this"] = ratio
        row["iterations_ratio_kind"] = bound
        row["seconds_per_iteration_ratio_this_over_adam"] = (
            row["seconds_per_iteration"] / adam["seconds_per_iteration"]
        )
    return rows


def _mean_lpd_batched(model, params, x, y, batch: int = 1000) -> float:
    total = 0.0
    for i in range(0, x.shape[0], batch):
        total += float(
            np.sum(
                np.asarray(model.log_predictive_density(params, x[i : i + batch], y[i : i + batch]))
            )
        )
    return total / x.shape[0]


def goals(rows: list[dict]) -> dict:
    """The issue's goals, per data set: met or not, with the numbers."""
    out = {}
    for row in rows:
        if row["method"] != "ng_adam":
            continue
        name = row["dataset"]
        entry: dict[str, Any] = {}
        if name in ("regression_1d", "breast_cancer"):
            ratio = row.get("iterations_ratio_adam_over_this")
            entry["iterations_ratio"] = ratio
            entry["iterations_ratio_kind"] = row.get("iterations_ratio_kind")
            entry["iterations_goal_met"] = (
                ratio is not None and ratio >= GOALS["iterations_ratio_min"]
            )
            cost = row.get("seconds_per_iteration_ratio_this_over_adam")
            entry["seconds_per_iteration_ratio"] = cost
            entry["cost_goal_met"] = (
                cost is not None and cost <= GOALS["seconds_per_iteration_ratio_max"]
            )
        if name == "regression_1d":
            entry["one_step_gap"] = row.get("one_step_gap")
        if name == "mnist":
            entry["test_accuracy"] = row["test_metric"]
            entry["accuracy_goal_met"] = row["test_metric"] >= GOALS["mnist_test_accuracy_min"]
        if entry:
            out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def print_results(rows: list[dict], *, title: str, file: Any = None) -> None:
    columns = [
        "dataset",
        "method",
        "its to target",
        "s to target",
        "ms / it",
        "final ELBO",
        "test metric",
        "adam/ng its",
        "ng/adam s/it",
        "one-step gap",
    ]
    cells = []
    for r in rows:
        ratio = r.get("iterations_ratio_adam_over_this")
        ratio_text = _fmt(ratio, ".1f")
        if ratio is not None and r.get("iterations_ratio_kind") == "lower bound":
            ratio_text = "≥ " + ratio_text
        cells.append(
            [
                r["dataset"],
                r["method"],
                _fmt(r["iterations_to_target"], "d"),
                _fmt(r["seconds_to_target"], ".2f"),
                _fmt(1e3 * r["seconds_per_iteration"], ".3f"),
                _fmt(r["final_elbo"], ".2f"),
                f"{r['test_metric_name']} {r['test_metric']:.4f}",
                ratio_text,
                _fmt(r.get("seconds_per_iteration_ratio_this_over_adam"), ".2f"),
                _fmt(r.get("one_step_gap"), ".1e"),
            ]
        )
    common.print_table(title, columns, cells, file=file)


def plot(path: Path, problems: list[Problem], rows: list[dict], runs: dict) -> Path | None:
    """ELBO against iteration (left) and seconds (right), one row of panels per data set."""
    fig = common.new_figure(figsize=(13, 3.6 * len(problems)), layout="constrained")
    if fig is None:
        return None
    from matplotlib.ticker import NullFormatter

    axes = fig.subplots(len(problems), 2, squeeze=False)
    for (ax_it, ax_s), problem in zip(axes, problems, strict=True):
        prob_rows = [r for r in rows if r["dataset"] == problem.name]
        best = prob_rows[0]["best_elbo"]
        lowest = best
        for name, run in runs[problem.name].items():
            seconds = run.seconds
            if problem.eval_every:
                its = np.asarray([e["iteration"] for e in run.evaluations])
                vals = np.asarray([e["elbo"] for e in run.evaluations])
                secs = seconds[its]
                marker = "o"
            else:
                its, vals, secs, marker = np.arange(len(run.values)), run.values, seconds, None
            (line,) = ax_it.plot(its, vals, label=name, marker=marker, ms=3)
            ax_s.plot(secs[1:], vals[1:], color=line.get_color(), label=name, marker=marker, ms=3)
            finite = vals[np.isfinite(vals)]
            if finite.size:
                lowest = min(lowest, float(np.percentile(finite, 5)))
        ref = prob_rows[0].get("sgpr_reference")
        top = best if ref is None else max(best, ref)
        for ax in (ax_it, ax_s):
            if ref is not None:
                ax.axhline(ref, color="k", ls="--", lw=0.8, label="SGPR optimum")
            ax.axhline(prob_rows[0]["target_elbo"], color="gray", ls=":", lw=0.8, label="target")
            span = max(top - lowest, 1.0)
            # The last 300 nats of the climb; on MNIST (ELBO ~1e4–1e5) the last half of |best|.
            window = 0.5 * abs(top) if problem.eval_every else 300.0
            ax.set_ylim(top - min(span, window) * 1.05, top + 0.05 * span)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax_it.set_xscale("symlog", linthresh=10)
        ax_it.set_xlim(left=0)
        ax_s.set_xscale("log")
        ax_s.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short spans
        ax_it.set(
            xlabel="iteration", ylabel="ELBO", title=f"{problem.name}: ELBO against iteration"
        )
        ax_s.set(xlabel="seconds (compilation excluded)", title=f"{problem.name}: against seconds")
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``natgrad bench svgp``."""
    parser.add_argument(
        "--mnist", default=None, metavar="PATH", help=f"MNIST npz file (default: ${ENV_VAR})"
    )
    parser.add_argument(
        "--out",
        default="bench-out",
        type=Path,
        help="directory for svgp.json and svgp.png (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 iterations per data set; MNIST on 10000 training and 2000 test images",
    )
    parser.add_argument(
        "--mode",
        choices=("joint", "alternating"),
        default=DEFAULT_MODE,
        help="ng_adam's mode; the other one is the ng_adam_<mode> row (default %(default)s)",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="iterations of every data set (override)"
    )
    parser.add_argument(
        "--mnist-iterations",
        type=int,
        default=None,
        help=f"MNIST iterations (default {ITERATIONS['mnist'][0]}; {ITERATIONS['mnist'][1]} quick)",
    )
    parser.add_argument(
        "--mnist-inducing",
        type=int,
        default=MNIST["inducing"],
        help="MNIST inducing inputs M (default %(default)s)",
    )
    parser.add_argument(
        "--mnist-batch-size", type=int, default=MNIST["batch_size"], help="(default %(default)s)"
    )
    parser.add_argument("--mnist-eval-every", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mnist-train-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mnist-test-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="data, inducing inputs, batch order")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show a progress bar on stderr"
    )


def _mnist_path(arg: str | None) -> Path | None:
    value = arg if arg is not None else (os.environ.get(ENV_VAR) or None)
    return None if value is None else Path(value)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(args.quick)
    names = [s.strip() for s in str(args.datasets).split(",") if s.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise SystemExit(
            f"natgrad bench svgp: --datasets: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(DATASETS)}"
        )
    iterations = {k: v[1 if quick else 0] for k, v in ITERATIONS.items()}
    if args.iterations is not None:
        iterations = dict.fromkeys(iterations, args.iterations)
    if args.mnist_iterations is not None:
        iterations["mnist"] = args.mnist_iterations
    chunk = args.chunk_size or CHUNK_SIZE["quick" if quick else "full"]
    if min(iterations.values()) < 1 or chunk < 1:
        raise SystemExit("natgrad bench svgp: iterations and --chunk-size must be ≥ 1")
    config: dict[str, Any] = {
        "quick": quick,
        "seed": args.seed,
        "datasets": names,
        "iterations": iterations,
        "chunk_size": chunk,
        "mode": args.mode,
        "dtype": "float64",
        "tolerance_nats": TOLERANCE,
        "adam_learning_rate": ADAM_LR,
        "natural_learning_rate": "1.0 for Gaussian likelihoods (exact in the conjugate case), "
        f"else log_linear_warmup{WARMUP}",
        "methods": {
            "ng_adam": f"natgrad.gp.hybrid(γ, adam({ADAM_LR:g}), mode={args.mode!r}); on "
            "regression_1d the hyperparameters are fixed (optax.set_to_zero); on MNIST Adam's "
            f"rate is {ADAM_LR:g}/(1 + t/{MNIST['adam_decay_steps']})",
            "ng_adam_<other mode>": "the same in the other mode (not on MNIST)",
            "adam": f"adam({ADAM_LR:g}) on everything (on regression_1d: on q only; on MNIST "
            "with ng_adam's decaying rate)",
        },
        "timing": "each method's lax.scan chunk compiled and run once on the initial state "
        "before timing; methods run chunk by chunk in alternation (order reversed every chunk); "
        "seconds_per_iteration is the median over chunks of seconds / chunk length",
        "target": f"first iteration with ELBO ≥ best ELBO found (over all methods) − "
        f"{TOLERANCE:g} nat; MNIST: − {MNIST_RELATIVE_TOLERANCE:.0%} of |best|, on full-data "
        "ELBOs at the evaluation points",
        "goals": GOALS,
    }
    path = _mnist_path(args.mnist)
    if "mnist" in names:
        if path is None:
            config["mnist"] = f"mnist: skipped (no --mnist or {ENV_VAR})"
        else:
            if args.mnist_inducing < 1 or args.mnist_batch_size < 1:
                raise SystemExit(
                    "natgrad bench svgp: --mnist-inducing and --mnist-batch-size must be ≥ 1"
                )
            train_size = args.mnist_train_size
            test_size = args.mnist_test_size
            if quick:
                train_size = train_size or MNIST["quick_train_size"]
                test_size = test_size or MNIST["quick_test_size"]
            eval_every = args.mnist_eval_every or (
                MNIST["quick_eval_every"] if quick else MNIST["eval_every"]
            )
            config["mnist"] = {
                "path": str(path),
                "inducing": args.mnist_inducing,
                "batch_size": args.mnist_batch_size,
                "train_size": train_size,
                "test_size": test_size,
                "eval_every": eval_every,
                "subset": f"quick: the first {train_size} training and {test_size} test images"
                if quick
                else "all images"
                if train_size is None and test_size is None
                else "a subset",
            }
    return config


BUILDERS = {
    "regression_1d": _regression_1d,
    "diabetes": _diabetes,
    "breast_cancer": _breast_cancer,
    "student_t": _student_t,
}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print a table, write ``OUT/svgp.json`` (and ``.png``)."""
    from natgrad import demo

    config = _config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if isinstance(config.get("mnist"), str):
        print(config["mnist"], file=sys.stderr)
    problems: list[Problem] = []
    all_runs: dict[str, dict[str, Run]] = {}
    rows: list[dict] = []
    with common.jax_x64(True):
        environment = common.environment_info()
        for index, name in enumerate(config["datasets"]):
            rng = np.random.default_rng([config["seed"], index])
            if name == "mnist":
                if not isinstance(config.get("mnist"), dict):
                    continue
                problem = _mnist(config, rng, Path(config["mnist"]["path"]))
            else:
                problem = BUILDERS[name](config, rng)
            problem.mode = config["mode"]
            t0 = time.perf_counter()
            with demo.progress(not args.no_progress) as bar:
                task = bar.add_task(f"svgp {name}", total=problem.iterations)
                runs = train(
                    problem,
                    seed=config["seed"],
                    on_chunk=functools.partial(bar.advance, task),
                )
            problem_rows = summarize(problem, runs)
            problem.info["wall_seconds"] = time.perf_counter() - t0
            config.setdefault("data", {})[name] = problem.info
            problems.append(problem)
            all_runs[name] = runs
            rows.extend(problem_rows)
    config["wall_seconds"] = time.perf_counter() - start
    config["load_average_end"] = common.load_average()
    config["goals_met"] = goals(rows)
    payload = {
        "benchmark": BENCHMARK,
        "config": config,
        "versions": environment["versions"],
        "machine": environment["machine"],
        "results": rows,
    }
    json_path = demo.write_json(out / f"{BENCHMARK}.json", payload)
    print_results(
        rows,
        title=f"SVGP: natural gradients + Adam (ng_adam, mode {config['mode']}) against Adam; "
        f"target = best ELBO − {TOLERANCE:g} nat",
    )
    for name, entry in config["goals_met"].items():
        print(f"goals, {name}: {entry}")
    if isinstance(config.get("mnist"), str):
        print(config["mnist"])
    print(f"wrote {json_path}")
    if not args.no_plot and problems:
        png = plot(out / f"{BENCHMARK}.png", problems, rows, all_runs)
        print(f"wrote {png}" if png else "matplotlib is not installed: no plot")
    print(f"total time {config['wall_seconds']:.1f} s", file=sys.stderr)
    return 0
