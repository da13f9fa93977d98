"""Train an MLP classifier with several optimizers on the same data, and compare them.

The engine behind ``natgrad bench mnist-mlp`` and the digits part of ``natgrad demo``. Every
method starts from one initialization θ₀ and sees the same batches in the same order:

* the model is an MLP with ReLU hidden layers and logits out (:func:`mlp_init`,
  :func:`mlp_apply`), the loss the mean softmax cross-entropy L(θ) = (1/B) Σᵢ −log softmax(fᵢ)_{yᵢ}
  (:data:`LOSS`);
* epoch e visits the training set in the order ``np.random.default_rng(seed + e).permutation(n)``
  in batches of B, dropping the last partial batch;
* a step is one jitted ``step(params, state, x, y, key)``: ``jax.grad`` of L on the batch and
  the optimizer's update (the Hessian-free methods also get ``batch=(x, y)`` and ``key=``, with
  ``key = jax.random.fold_in(PRNGKey(seed), t)`` at step t).

The methods (:data:`METHODS`, each built from a config dict by :func:`build`):

=====================  ==========================================================================
``sgd``                ``optax.sgd(learning_rate=0.1)``
``adam``               ``optax.adam(learning_rate=1e-3)``
``ng_fisher``          :func:`natgrad.hessian_free` with the exact Fisher (= GGN for softmax CE)
``ng_fisher_mc``       ... with the one-sample Monte Carlo Fisher (targets drawn from the model)
``ng_empirical_fisher`` ... with the empirical Fisher (1/B) Σᵢ gᵢgᵢᵀ
``blog_rank_one``      the "empirical natural gradient" of gebob19/naturalgradient, fed to Adam
                       (:func:`blog_rank_one_transform`; *not* a natural gradient, a reference)
=====================  ==========================================================================

The three ``ng_*`` methods share :data:`NG_SETTINGS` (damping, CG iterations, ...), which a
method's config overrides. Their step size decays (a cosine from ``learning_rate`` to
``learning_rate_final_fraction`` of it over ``learning_rate_decay_epochs`` epochs, or over the
whole run when that is None, then constant; :func:`learning_rate_schedule`):
on minibatches a fixed damping with a decaying step is what reaches the best accuracy, while
Levenberg–Marquardt adaptation of λ drives it towards the minibatch's own curvature and
overfits each batch. ``sgd`` and ``adam`` keep the constant rates the benchmark's issue names.

Timing (:func:`train`, :func:`train_interleaved`): each step function is compiled and run once on
the first batch with a throwaway optimizer state before the clock starts; then each step is timed
alone (``time.perf_counter`` around the call and ``jax.block_until_ready``). Preparing the batch
(a numpy gather and the transfer to the device), the PRNG key, reading diagnostics and evaluating
the test accuracy all happen outside the timed region. :func:`train_interleaved` runs several
methods step by step in turn (the order reversed at every step), so that they share the machine's
load as the benchmarks' alternating timers do.

Cost (:func:`cvp_over_grad`): the seconds of one curvature-vector product over the seconds of one
gradient on the same batch, the product's time measured as a difference of k + 1 and 1 products
after one linearization, so the linearization is amortized as it is inside CG.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from natgrad import curvature as curvature_lib
from natgrad.bench import common
from natgrad.losses import SoftmaxCrossEntropy
from natgrad.optim.hessian_free import hessian_free
from natgrad.solvers import conjugate_gradient

PyTree = Any

#: The training loss: mean softmax cross-entropy of the logits against integer labels.
LOSS = SoftmaxCrossEntropy()

#: Settings of :func:`natgrad.hessian_free` shared by ``ng_fisher``, ``ng_fisher_mc`` and
#: ``ng_empirical_fisher`` (a method's config overrides them). Read when a method is built, so
#: changing this dict changes the next run.
NG_SETTINGS: dict[str, Any] = dict(
    learning_rate=8.0,
    learning_rate_decay="cosine",
    learning_rate_final_fraction=0.05,
    learning_rate_decay_epochs=2,
    damping=3.0,
    adapt_damping=False,
    cg_max_iterations=2,
    curvature_batch_size=32,
)

#: The curvature of each Hessian-free method.
CURVATURE_OF = {
    "ng_fisher": "fisher",
    "ng_fisher_mc": "fisher_mc",
    "ng_empirical_fisher": "empirical_fisher",
}


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------


def mlp_init(key: jax.Array, sizes: Sequence[int], dtype: Any = jnp.float32) -> list[dict]:
    """MLP parameters ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]`` for layer sizes ``sizes``.

    Weights and biases uniform on ±1/√n_in (the usual default of ``torch.nn.Linear``).

    Example:
      >>> params = mlp_init(jax.random.PRNGKey(0), [784, 128, 10])
      >>> [p["w"].shape for p in params]
      [(784, 128), (128, 10)]
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        k_w, k_b = jax.random.split(k)
        bound = 1.0 / math.sqrt(n_in)
        params.append(
            {
                "w": jax.random.uniform(k_w, (n_in, n_out), dtype, -bound, bound),
                "b": jax.random.uniform(k_b, (n_out,), dtype, -bound, bound),
            }
        )
    return params


def mlp_apply(params: Sequence[Mapping[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of the MLP: ReLU after every layer but the last. ``(B, n_in) -> (B, n_out)``."""
    *hidden, last = params
    for layer in hidden:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ last["w"] + last["b"]


def mean_loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    """L(θ) = mean softmax cross-entropy of ``mlp_apply(params, x)`` against labels ``y``."""
    return LOSS(mlp_apply(params, x), y)


class Split(NamedTuple):
    """A classification data set as numpy arrays: inputs (N, F) float, labels (N,) int."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------------------------
# The blog's rank-one "natural gradient".
# --------------------------------------------------------------------------------------------


def blog_rank_one_transform(
    *, max_iterations: int = 100, rtol: float = 1e-5
) -> optax.GradientTransformation:
    """The "empirical" step of gebob19/naturalgradient: X = (GGᵀ)⁺G per leaf, by CG.

    Not a natural gradient.

    For each parameter leaf with (batch-mean) gradient G, a matrix (a bias as a column vector),
    solves (G Gᵀ) X = G by :func:`natgrad.solvers.conjugate_gradient` from X = 0 without damping,
    the product being X ↦ G(GᵀX), and returns X in G's shape. The blog calls GGᵀ the "empirical
    Fisher", but it is the outer product of the *mean* gradient with itself (rank ≤ min of G's
    shape; rank one for a bias), not the empirical Fisher (1/B) Σᵢ gᵢgᵢᵀ of per-example
    gradients, let alone the Fisher. In exact arithmetic CG from 0 converges to the
    minimum-norm solution X = (GGᵀ)⁺G = (Gᵀ)⁺: for a bias g/‖g‖², for a matrix G = UΣVᵀ the
    matrix UΣ⁻¹Vᵀ, which whitens the gradient's singular values. Kept as a reference point
    for the benchmarks; chain it before an optimizer as the blog does
    (``optax.chain(blog_rank_one_transform(), optax.adam(1e-3))``).

    Args:
      max_iterations: CG iterations at most (the blog's ``maxiter=100``).
      rtol: CG's relative residual tolerance (``jax.scipy.sparse.linalg.cg``'s default 1e-5,
        as the blog used).

    Returns:
      An :class:`optax.GradientTransformation` with an empty state.
    """

    def solve(g: jax.Array) -> jax.Array:
        matrix = g.reshape(g.shape[0], -1) if g.ndim != 1 else g[:, None]

        def mv(x):
            return matrix @ (matrix.T @ x)

        solution = conjugate_gradient(mv, matrix, max_iterations=max_iterations, rtol=rtol)
        return solution.x.reshape(g.shape)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(solve, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Methods.
# --------------------------------------------------------------------------------------------


def _sgd(config: Mapping[str, Any], steps_per_epoch: int, epochs: int):
    del steps_per_epoch, epochs
    settings = {"learning_rate": 0.1, **config}
    return optax.sgd(**settings), settings


def _adam(config: Mapping[str, Any], steps_per_epoch: int, epochs: int):
    del steps_per_epoch, epochs
    settings = {"learning_rate": 1e-3, **config}
    return optax.adam(**settings), settings


def learning_rate_schedule(
    learning_rate: float, decay: str | None, final_fraction: float, total_steps: int
) -> float | optax.Schedule:
    """The step size: constant (``decay=None``) or ``"cosine"``-decayed over the run.

    Cosine: αₜ = α₀·[f + (1 − f)·½(1 + cos(π·min(t, T)/T))] with f = ``final_fraction`` and
    T = ``total_steps`` (``optax.cosine_decay_schedule``), from α₀ at t = 0 to f·α₀ at t = T.
    """
    if decay is None:
        return learning_rate
    if decay != "cosine":
        raise ValueError(f"unknown learning_rate_decay {decay!r}: expected None or 'cosine'")
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive for a decayed rate, got {total_steps}")
    return optax.cosine_decay_schedule(learning_rate, total_steps, alpha=final_fraction)


def _hessian_free(curvature: str) -> Callable:
    def build_method(config: Mapping[str, Any], steps_per_epoch: int, epochs: int):
        settings = {**NG_SETTINGS, "curvature": curvature, **config}
        options = dict(settings)
        decay_epochs = options.pop("learning_rate_decay_epochs", None)
        options["learning_rate"] = learning_rate_schedule(
            options.pop("learning_rate"),
            options.pop("learning_rate_decay", None),
            options.pop("learning_rate_final_fraction", 0.0),
            steps_per_epoch * (epochs if decay_epochs is None else decay_epochs),
        )
        return hessian_free(mlp_apply, LOSS, **options), settings

    build_method.__doc__ = f"natgrad.hessian_free with curvature={curvature!r} and NG_SETTINGS."
    return build_method


def _blog_rank_one(config: Mapping[str, Any], steps_per_epoch: int, epochs: int):
    del steps_per_epoch, epochs
    settings = {"cg_max_iterations": 100, "cg_rtol": 1e-5, "learning_rate": 1e-3, **config}
    tx = optax.chain(
        blog_rank_one_transform(
            max_iterations=settings["cg_max_iterations"], rtol=settings["cg_rtol"]
        ),
        optax.adam(settings["learning_rate"]),
    )
    return tx, settings


#: name → builder ``(config, steps_per_epoch, epochs) -> (optax transformation, settings)``.
METHODS: dict[str, Callable[[Mapping[str, Any], int, int], tuple[Any, dict[str, Any]]]] = {
    "sgd": _sgd,
    "adam": _adam,
    "ng_fisher": _hessian_free("fisher"),
    "ng_fisher_mc": _hessian_free("fisher_mc"),
    "ng_empirical_fisher": _hessian_free("empirical_fisher"),
    "blog_rank_one": _blog_rank_one,
}


def build(
    method: str,
    config: Mapping[str, Any] | None = None,
    *,
    steps_per_epoch: int = 1,
    epochs: int = 1,
) -> tuple[Any, dict[str, Any]]:
    """The optax transformation of ``method`` and its settings (defaults updated by ``config``).

    ``steps_per_epoch`` and ``epochs`` give the run's length, over which a decayed learning
    rate decays (see :data:`NG_SETTINGS`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {list(METHODS)}")
    return METHODS[method](dict(config or {}), steps_per_epoch, epochs)


def parse_methods(text: str | Sequence[str] | None) -> list[str]:
    """``"sgd,adam"`` (or a list) → ``["sgd", "adam"]``, checked against :data:`METHODS`."""
    if text is None:
        return list(METHODS)
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip() for p in parts if p.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {unknown or names}: choose from {', '.join(METHODS)} "
            "(comma-separated)"
        )
    return list(dict.fromkeys(names))


def make_step(tx: Any, method: str) -> Callable:
    """Jitted ``step(params, state, x, y, key) -> (params, state)`` of one method."""
    extra_args = method in CURVATURE_OF

    def step(params, state, x, y, key):
        value, grads = jax.value_and_grad(mean_loss)(params, x, y)
        if extra_args:
            updates, state = tx.update(grads, state, params, batch=(x, y), key=key, value=value)
        else:
            updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


@jax.jit
def _num_correct(params, x, y):
    return jnp.sum(jnp.argmax(mlp_apply(params, x), axis=-1) == y)


def accuracy(params: PyTree, x: jax.Array, y: jax.Array, *, chunk: int = 10_000) -> float:
    """Share of rows of ``x`` whose arg-max logit is the label (jitted, in chunks of rows)."""
    correct = sum(
        int(_num_correct(params, x[i : i + chunk], y[i : i + chunk]))
        for i in range(0, x.shape[0], chunk)
    )
    return correct / x.shape[0]


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """One method's training in progress (see :func:`train_interleaved`)."""

    method: str
    settings: dict[str, Any]
    step: Callable
    params: PyTree
    state: Any
    step_seconds: list[float] = dataclasses.field(default_factory=list)
    cg_iterations: list[int] = dataclasses.field(default_factory=list)
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    eval_seconds: list[float] = dataclasses.field(default_factory=list)
    eval_accuracy: list[float] = dataclasses.field(default_factory=list)
    epoch_accuracy: list[float] = dataclasses.field(default_factory=list)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0


def _hf_state(state: Any) -> Any:
    """The :class:`~natgrad.optim.hessian_free.HessianFreeState` in an optax state, or None."""
    if hasattr(state, "cg_iterations"):
        return state
    return None


def train_interleaved(
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    params0: PyTree,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    eval_every: int = 50,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train several methods from ``params0`` on the same batches, one step of each in turn.

    Args:
      methods: method names, or name → config (see :func:`build`).
      params0: the common initialization (e.g. :func:`mlp_init`).
      data: a :class:`Split`; inputs float (their dtype is the model's), labels int.
      epochs: passes over the training set.
      batch_size: B; each epoch has ⌊n/B⌋ steps (the last partial batch is dropped).
      seed: the epoch permutations use ``default_rng(seed + epoch)``, the keys
        ``fold_in(PRNGKey(seed), step)``.
      eval_every: test accuracy every this many steps (and at step 0 and each epoch's end).
      progress: called with 1 after each step (of all methods), outside the timed region.

    Returns:
      One trace per method (see :func:`train`).
    """
    configs = (
        {m: {} for m in methods} if not isinstance(methods, Mapping) else dict(methods.items())
    )
    if epochs < 1 or batch_size < 1 or eval_every < 1:
        raise ValueError("epochs, batch_size and eval_every must be positive")
    n = data.x_train.shape[0]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    x_test = jnp.asarray(data.x_test)
    y_test = jnp.asarray(data.y_test, jnp.int32)
    base_key = jax.random.PRNGKey(seed)

    def batch(order: np.ndarray, i: int) -> tuple[jax.Array, jax.Array]:
        idx = order[i * batch_size : (i + 1) * batch_size]
        return jax.block_until_ready(
            (jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx], jnp.int32))
        )

    first_x, first_y = batch(np.random.default_rng(seed).permutation(n), 0)
    runs = []
    for method, config in configs.items():
        tx, settings = build(method, config, steps_per_epoch=steps_per_epoch, epochs=epochs)
        step = make_step(tx, method)
        start = time.perf_counter()
        # Compile and run once on the first batch with a throwaway state; discarded.
        jax.block_until_ready(step(params0, tx.init(params0), first_x, first_y, base_key))
        run = _Run(method, settings, step, params0, tx.init(params0))
        run.compile_seconds = time.perf_counter() - start
        runs.append(run)

    def evaluate(run: _Run, t: int) -> None:
        run.eval_steps.append(t)
        run.eval_seconds.append(float(sum(run.step_seconds)))
        run.eval_accuracy.append(accuracy(run.params, x_test, y_test))

    for run in runs:
        evaluate(run, 0)
    t = 0
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(n)
        for i in range(steps_per_epoch):
            x, y = batch(order, i)
            key = jax.block_until_ready(jax.random.fold_in(base_key, t))
            t += 1
            for run in runs if t % 2 else reversed(runs):
                start = time.perf_counter()
                params, state = run.step(run.params, run.state, x, y, key)
                jax.block_until_ready((params, state))
                run.step_seconds.append(time.perf_counter() - start)
                run.params, run.state = params, state
                hf = _hf_state(state)
                if hf is not None:
                    run.cg_iterations.append(int(hf.cg_iterations))
            for run in runs:
                if t % eval_every == 0 or i == steps_per_epoch - 1:
                    evaluate(run, t)
            if progress is not None:
                progress(1)
        for run in runs:
            run.epoch_accuracy.append(run.eval_accuracy[-1])
            run.epoch_seconds.append(float(sum(run.step_seconds[epoch * steps_per_epoch :])))
    return [_trace(run, steps_per_epoch) for run in runs]


def _trace(run: _Run, steps_per_epoch: int) -> dict[str, Any]:
    hf = _hf_state(run.state)
    products = None
    if hf is not None:
        # hessian_free always passes a warm start x0 = β·p_{t−1} to CG (zero at the first step),
        # and CG spends one product on its residual b − (C + λI)x0 before its iterations.
        products = float(np.mean(np.asarray(run.cg_iterations) + 1.0))
    finite = all(bool(np.all(np.isfinite(np.asarray(p)))) for p in jax.tree.leaves(run.params))
    return {
        "method": run.method,
        "settings": run.settings,
        "steps_per_epoch": steps_per_epoch,
        "steps": run.eval_steps,
        "epochs": [s / steps_per_epoch for s in run.eval_steps],
        "seconds": run.eval_seconds,
        "test_accuracy": run.eval_accuracy,
        "epoch_test_accuracy": run.epoch_accuracy,
        "epoch_seconds": run.epoch_seconds,
        "seconds_per_step": statistics.median(run.step_seconds),
        "total_seconds": float(sum(run.step_seconds)),
        "compile_seconds": run.compile_seconds,
        "curvature_products_per_step": products,
        "cg_iterations_mean": float(np.mean(run.cg_iterations)) if hf is not None else None,
        "num_rejected": int(hf.num_rejected) if hf is not None else None,
        "final_damping": float(hf.damping) if hf is not None else None,
        "finite": finite,
        "final_params": run.params,
    }


def train(
    method: str,
    config: Mapping[str, Any] | None,
    params0: PyTree,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    eval_every: int = 50,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one method (see :func:`train_interleaved` for the data order and timing).

    Returns:
      A trace: ``steps``, ``epochs`` (fractional) and ``seconds`` (cumulative training seconds)
      of every evaluation with its ``test_accuracy``; ``epoch_test_accuracy`` and
      ``epoch_seconds`` (training seconds within the epoch) per epoch; ``seconds_per_step``
      (median); ``curvature_products_per_step`` for Hessian-free methods: the mean over steps
      of CG's iterations + 1 (the warm start's residual costs one product; hessian_free always
      passes a warm start, zero at the first step), None otherwise; ``settings``,
      ``compile_seconds``, ``num_rejected``, ``final_damping``, ``finite`` and ``final_params``.
    """
    return train_interleaved(
        {method: dict(config or {})},
        params0,
        data,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every=eval_every,
        progress=progress,
    )[0]


def seconds_to(trace: Mapping[str, Any], target: float) -> float | None:
    """Training seconds at the first evaluation with test accuracy ≥ ``target`` (None if never)."""
    for seconds, acc in zip(trace["seconds"], trace["test_accuracy"], strict=True):
        if acc >= target:
            return float(seconds)
    return None


def steps_to(trace: Mapping[str, Any], target: float) -> int | None:
    """Steps at the first evaluation with test accuracy ≥ ``target`` (None if never)."""
    for steps, acc in zip(trace["steps"], trace["test_accuracy"], strict=True):
        if acc >= target:
            return int(steps)
    return None


# --------------------------------------------------------------------------------------------
# The cost of a curvature-vector product.
# --------------------------------------------------------------------------------------------


def _product_chain(curvature: str, num_samples: int) -> Callable:
    """Jitted ``(params, batch, v, key, n) -> v'``: build the operator, apply it n times.

    n is an argument (an int32 array, so one compilation serves every n). Each product is
    normalized, v ← Cv/‖Cv‖, so the chain neither overflows nor is hoisted out of the loop
    (every product depends on the last).
    """

    def chain(params, batch, v, key, n):
        op = curvature_lib.make(
            curvature, mlp_apply, LOSS, params, batch, key=key, num_samples=num_samples
        )

        def body(_, v):
            cv = op.mv(v)
            norm = jnp.sqrt(curvature_lib.tree_vdot(cv, cv))
            return jax.tree.map(lambda c: c / (norm + jnp.finfo(c.dtype).tiny), cv)

        return jax.lax.fori_loop(0, n, body, v)

    return jax.jit(chain)


def cvp_over_grad(
    method: str,
    params: PyTree,
    batch: tuple[jax.Array, jax.Array],
    *,
    config: Mapping[str, Any] | None = None,
    products: int = 10,
    repeats: int = 7,
    min_time: float = 0.02,
    key: jax.Array | None = None,
    curvature_batch: bool = True,
) -> dict[str, Any]:
    """Seconds of one curvature-vector product of ``method`` over seconds of one gradient.

    Times, alternately (:func:`natgrad.bench.common.time_alternating`, medians over
    ``repeats``), three jitted functions on the same batch:

    * ``grad``: ``jax.grad`` of the mean cross-entropy;
    * ``one``: build the curvature operator (:func:`natgrad.curvature.make`, one linearization)
      and apply it once;
    * ``many``: build it and apply it k + 1 times (k = ``products``) in a ``fori_loop``
      (the same compiled function as ``one``, the count being an argument);

    so one product costs s = (t_many − t_one)/k with the linearization amortized as in CG, and
    ``ratio = s / t_grad``. The same is measured for products on the first
    ``curvature_batch_size`` examples (what the optimizer uses, when its settings have one)
    against the full-batch gradient: ``ratio_curvature_batch``.

    Args:
      method: an ``ng_*`` method (its curvature and ``num_mc_samples`` come from its settings).
      params: where to measure.
      batch: ``(x, y)``, the training batch size.
      config: the method's config (see :func:`build`).
      products: k.
      repeats, min_time: see :func:`~natgrad.bench.common.time_alternating`.
      key: PRNG key for the Monte Carlo Fisher (default ``PRNGKey(0)``).
      curvature_batch: also time products on the curvature batch (False: the
        ``*_curvature_batch`` fields are None).

    Returns:
      ``{"ratio", "seconds_grad", "seconds_product", "seconds_build_and_one_product",
      "ratio_curvature_batch", "seconds_product_curvature_batch", "batch_size",
      "curvature_batch_size", "products", "repeats"}``.
    """
    if method not in CURVATURE_OF:
        raise ValueError(f"{method!r} has no curvature operator: use one of {list(CURVATURE_OF)}")
    _, settings = build(method, config)
    curvature = settings["curvature"]
    num_samples = int(settings.get("num_mc_samples", 1))
    key = jax.random.PRNGKey(0) if key is None else key
    x, y = batch
    grad_fn = jax.jit(jax.grad(mean_loss))
    v = jax.block_until_ready(grad_fn(params, x, y))
    chain = _product_chain(curvature, num_samples)
    one, many = jnp.int32(1), jnp.int32(products + 1)
    functions = {
        "grad": lambda: grad_fn(params, x, y),
        "one": lambda: chain(params, (x, y), v, key, one),
        "many": lambda: chain(params, (x, y), v, key, many),
    }
    k_batch = settings.get("curvature_batch_size")
    small = None
    if curvature_batch and k_batch is not None and k_batch < x.shape[0]:
        small = (x[:k_batch], y[:k_batch])
        functions["one_small"] = lambda: chain(params, small, v, key, one)
        functions["many_small"] = lambda: chain(params, small, v, key, many)
    timing = common.time_alternating(functions, repeats=repeats, min_time=min_time)
    t_grad = timing["grad"].median
    t_product = (timing["many"].median - timing["one"].median) / products
    result = {
        "ratio": t_product / t_grad,
        "seconds_grad": t_grad,
        "seconds_product": t_product,
        "seconds_build_and_one_product": timing["one"].median,
        "batch_size": int(x.shape[0]),
        "curvature_batch_size": int(small[0].shape[0]) if small else int(x.shape[0]),
        "products": products,
        "repeats": repeats,
    }
    if small is not None:
        t_small = (timing["many_small"].median - timing["one_small"].median) / products
        result["seconds_product_curvature_batch"] = t_small
        result["ratio_curvature_batch"] = t_small / t_grad
    elif curvature_batch:  # the curvature batch is the whole batch
        result["seconds_product_curvature_batch"] = t_product
        result["ratio_curvature_batch"] = result["ratio"]
    else:
        result["seconds_product_curvature_batch"] = result["ratio_curvature_batch"] = None
        result["curvature_batch_size"] = None
    return result


# --------------------------------------------------------------------------------------------
# A whole comparison: rows, table and plot.
# --------------------------------------------------------------------------------------------


def target_key(target: float) -> str:
    """``0.97 -> "97"``: the suffix of the ``seconds_to_97``/``steps_to_97`` row fields."""
    return f"{100 * target:g}"


def compare(
    methods: Sequence[str],
    params0: PyTree,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    target: float,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    cvp_repeats: int = 7,
    cvp_min_time: float = 0.02,
    cvp_curvature_batch: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``methods`` (interleaved) and return one result row per method.

    Row fields: ``method``, ``test_accuracy`` (one per epoch), ``seconds_per_epoch`` (median
    over epochs), ``seconds_to_T``/``steps_to_T`` (T = :func:`target_key`; None if never),
    ``seconds_to_T_vs_adam``/``_vs_sgd`` (ratios, when both reached it), ``seconds_per_step``
    (median), ``curvature_products_per_step`` and ``cvp_over_grad`` (ng_* methods; None
    otherwise) with the details in ``cvp`` (``cvp_*`` arguments: see :func:`cvp_over_grad`),
    ``settings``, and the trace (``trace``).
    """
    configs = configs or {}
    traces = train_interleaved(
        {m: dict(configs.get(m, {})) for m in methods},
        params0,
        data,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        eval_every=eval_every,
        progress=progress,
    )
    order = np.random.default_rng(seed).permutation(data.x_train.shape[0])[:batch_size]
    first_batch = (jnp.asarray(data.x_train[order]), jnp.asarray(data.y_train[order], jnp.int32))
    t = target_key(target)
    rows = []
    for trace in traces:
        method = trace["method"]
        cvp = None
        if method in CURVATURE_OF:
            cvp = cvp_over_grad(
                method,
                params0,
                first_batch,
                config=configs.get(method),
                repeats=cvp_repeats,
                min_time=cvp_min_time,
                curvature_batch=cvp_curvature_batch,
            )
        trace = dict(trace)
        trace.pop("final_params")
        rows.append(
            {
                "method": method,
                "test_accuracy": trace["epoch_test_accuracy"],
                "seconds_per_epoch": statistics.median(trace["epoch_seconds"]),
                f"seconds_to_{t}": seconds_to(trace, target),
                f"steps_to_{t}": steps_to(trace, target),
                "seconds_per_step": trace["seconds_per_step"],
                "curvature_products_per_step": trace["curvature_products_per_step"],
                "cvp_over_grad": cvp["ratio"] if cvp else None,
                "cvp": cvp,
                "num_rejected": trace["num_rejected"],
                "finite": trace["finite"],
                "compile_seconds": trace["compile_seconds"],
                "settings": trace["settings"],
                "trace": {
                    k: trace[k]
                    for k in (
                        "steps",
                        "epochs",
                        "seconds",
                        "test_accuracy",
                        "epoch_seconds",
                        "steps_per_epoch",
                    )
                },
            }
        )
    by_name = {r["method"]: r for r in rows}
    for row in rows:
        for ref in ("adam", "sgd"):
            mine = row[f"seconds_to_{t}"]
            theirs = by_name[ref][f"seconds_to_{t}"] if ref in by_name else None
            row[f"seconds_to_{t}_vs_{ref}"] = mine / theirs if mine is not None and theirs else None
    return rows


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _seconds(value: float | None) -> str:
    return "—" if value is None else common.format_seconds(value)


def _accuracies(values: Sequence[float], most: int = 4) -> str:
    """Per-epoch accuracies; beyond ``most`` epochs the first two, "…" and the last."""
    shown = [f"{a:.4f}" for a in values]
    if len(shown) > most:
        shown = [*shown[:2], "…", shown[-1]]
    return " ".join(shown)


def print_comparison(rows: Sequence[Mapping[str, Any]], *, title: str, target: float) -> None:
    """The table of :func:`compare`'s rows and the time-to-target ratios against adam and sgd."""
    t = target_key(target)
    columns = [
        "method",
        "test acc per epoch",
        "s / epoch",
        f"s to {t}%",
        f"steps to {t}%",
        "ms / step",
        "products / step",
        "cvp / grad",
    ]
    table = [
        [
            r["method"],
            _accuracies(r["test_accuracy"]),
            _seconds(r["seconds_per_epoch"]),
            _seconds(r[f"seconds_to_{t}"]),
            _fmt(r[f"steps_to_{t}"], "d"),
            _fmt(1e3 * r["seconds_per_step"], ".2f"),
            _fmt(r["curvature_products_per_step"], ".2f"),
            _fmt(r["cvp_over_grad"], ".2f"),
        ]
        for r in rows
    ]
    common.print_table(title, columns, table)
    by_name = {r["method"]: r for r in rows}
    for ref in ("adam", "sgd"):
        if ref not in by_name:
            continue
        if by_name[ref][f"seconds_to_{t}"] is None:
            print(f"seconds to {t}% / {ref}'s: {ref} never reached {t}% (no ratios)")
            continue
        parts = [
            f"{r['method']} {_fmt(r[f'seconds_to_{t}_vs_{ref}'], '.2f')}"
            for r in rows
            if r["method"] != ref
        ]
        print(f"seconds to {t}% / {ref}'s: " + ", ".join(parts))


def plot_comparison(
    path: str | Path, rows: Sequence[Mapping[str, Any]], *, title: str, target: float
) -> Path | None:
    """Test accuracy against epoch and against training seconds, one curve per method.

    The accuracy axis starts a little below the lowest accuracy after the first epoch (the
    start, near chance, is off the scale); the time axis is logarithmic. None without matplotlib.
    """
    fig = common.new_figure(figsize=(12, 4.5), layout="constrained")
    if fig is None:
        return None
    ax_epoch, ax_time = fig.subplots(1, 2)
    lowest = 1.0
    for i, row in enumerate(rows):
        tr = row["trace"]
        color = f"C{i}"
        ax_epoch.plot(tr["epochs"], tr["test_accuracy"], ".-", color=color, label=row["method"])
        seconds, acc = np.asarray(tr["seconds"]), np.asarray(tr["test_accuracy"])
        later = seconds > 0
        ax_time.plot(seconds[later], acc[later], ".-", color=color, label=row["method"])
        lowest = min(lowest, *row["test_accuracy"])
    bottom = max(0.0, min(lowest, target) - 0.05)
    for ax in (ax_epoch, ax_time):
        ax.axhline(target, color="gray", lw=0.8, ls="--", label=f"{target:g}")
        ax.set_ylim(bottom, 1.0)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    ax_epoch.set(xlabel="epoch", title="test accuracy against epoch")
    ax_time.set(
        xlabel="training seconds (compilation and evaluation excluded)",
        xscale="log",
        title="test accuracy against training time",
    )
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
