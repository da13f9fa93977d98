"""Training sparse variational GPs: natural steps on q(u), Adam (or any optax) on the rest.

:func:`hybrid` is the optimizer: an optax transformation over the whole parameter dict of
:class:`natgrad.gp.SVGP` that takes :func:`natgrad.natural_vi` steps on ``params["q"]`` and
``other`` (Adam by default) steps on everything else, in one of two orders:

* ``mode="alternating"`` (Salimbeni et al. 2018, GPflow's practice): the natural step first, then
  the gradient of the other parameters is taken again *at the updated q* (it costs a second
  backward pass; ``update`` needs ``value_fn=``). With a Gaussian likelihood and γ = 1 the
  natural step lands exactly on the optimal q for the current hyperparameters, so the Adam step
  sees the collapsed (Titsias) bound's gradient.
* ``mode="joint"``: both steps from the one gradient of the step's loss (one backward pass).

:func:`fit` runs it: jit-compiled chunks of ``jax.lax.scan`` over minibatches drawn without
replacement (a fresh permutation per epoch), the ELBO of every iteration, an optional progress bar
and early stopping on a plateau.

A step whose loss or gradient is not finite (for instance when K_uu failed its Cholesky
factorization) is rejected: the update is zero and ``num_rejected`` counts it. :func:`fit` checks
each chunk and raises :class:`natgrad.gp.svgp.CholeskyError` (or ``FloatingPointError``) naming
the iteration, with the parameters from the start of that chunk in the error's ``params``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from natgrad.curvature.operator import tree_all_finite
from natgrad.gp.svgp import SVGP, CholeskyError
from natgrad.optim.natural_vi import natural_vi
from natgrad.schedules import log_linear_warmup

PyTree = Any
NATURAL_KEY = "q"


class HybridState(NamedTuple):
    """State of :func:`hybrid`.

    Attributes:
      natural: the :func:`natgrad.natural_vi` state of ``params["q"]`` (None without one).
      other: the state of the other parameters' transformation.
      num_rejected: steps rejected because their loss or gradient was not finite (int32).
    """

    natural: Any
    other: Any
    num_rejected: jax.Array


def _split(params: dict) -> tuple[PyTree, dict]:
    if not isinstance(params, dict) or NATURAL_KEY not in params:
        raise ValueError(
            f"hybrid: params must be a dict with the variational parameters under "
            f"{NATURAL_KEY!r} (as SVGP.init returns); got {type(params).__name__}"
        )
    return params[NATURAL_KEY], {k: v for k, v in params.items() if k != NATURAL_KEY}


def hybrid(
    natural_learning_rate: float | optax.Schedule | None,
    other: optax.GradientTransformation,
    parameterization: Any = "mean_cholesky",
    *,
    mode: Literal["alternating", "joint"] = "alternating",
    max_shrinks: int = 10,
    step_parameterization: Any = "natural",
) -> optax.GradientTransformationExtraArgs:
    """Natural-gradient steps on ``params["q"]`` and ``other`` on the rest of the dict.

    ``update(grads, state, params, *, value_fn=None)``: ``grads`` are the loss's gradients for
    all of ``params``; ``value_fn(params) -> loss`` (the same loss, on the same batch) is needed
    in ``"alternating"`` mode to re-take the other parameters' gradient at the updated q.

    Args:
      natural_learning_rate: γ for :func:`natgrad.natural_vi` (a float or a schedule such as
        ``log_linear_warmup(1e-4, 0.1, 5)``); None puts every parameter, q included, under
        ``other`` (the plain-Adam baseline).
      other: an optax transformation for the kernel, likelihood and inducing inputs.
      parameterization: q(u)'s parameterization (the model's).
      mode: ``"alternating"`` or ``"joint"`` (see the module docstring).
      max_shrinks: the natural step's safeguard (halvings before a step is skipped).
      step_parameterization: the coordinates of the natural step (:func:`natgrad.natural_vi`);
        the default ``"natural"`` makes γ = 1 exact for a Gaussian likelihood whichever
        parameterization q(u) is stored in; None steps in q's own coordinates.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with state :class:`HybridState`.
    """
    if mode not in ("alternating", "joint"):
        raise ValueError(f"hybrid: mode must be 'alternating' or 'joint', got {mode!r}")
    natural = (
        None
        if natural_learning_rate is None
        else natural_vi(
            natural_learning_rate,
            parameterization,
            max_shrinks=max_shrinks,
            step_parameterization=step_parameterization,
        )
    )

    def init_fn(params):
        if natural is None:
            return HybridState(None, other.init(params), jnp.zeros([], jnp.int32))
        q, rest = _split(params)
        return HybridState(natural.init(q), other.init(rest), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, value_fn=None):
        if params is None:
            raise ValueError("hybrid needs `params` in update(grads, state, params)")
        if natural is None:
            new_updates, other_state = other.update(updates, state.other, params)
            ok = tree_all_finite(updates)
            new_state = HybridState(None, other_state, state.num_rejected)
        else:
            q, rest = _split(params)
            grads_q, grads_rest = _split(updates)
            q_updates, natural_state = natural.update(grads_q, state.natural, q)
            if mode == "alternating":
                if value_fn is None:
                    raise ValueError(
                        "hybrid(mode='alternating') re-takes the gradient at the updated q: pass "
                        "value_fn=(params -> loss) to update"
                    )
                new_q = optax.apply_updates(q, q_updates)
                grads_rest = jax.grad(lambda r: value_fn({**r, NATURAL_KEY: new_q}))(rest)
            rest_updates, other_state = other.update(grads_rest, state.other, rest)
            new_updates = {**rest_updates, NATURAL_KEY: q_updates}
            ok = tree_all_finite(updates) & tree_all_finite(grads_rest)
            new_state = HybridState(natural_state, other_state, state.num_rejected)
        ok = ok & tree_all_finite(new_updates)
        new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        # A rejected step keeps the previous state (so Adam's moments see no NaN either).
        new_state = jax.tree.map(
            lambda new, old: jnp.where(ok, new, old),
            new_state._replace(num_rejected=state.num_rejected),
            state._replace(num_rejected=state.num_rejected),
        )
        return new_updates, new_state._replace(
            num_rejected=state.num_rejected + (~ok).astype(jnp.int32)
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------------------------------
# The training loop.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: the final parameters.
      state: the optimizer's final state.
      elbo: ``(T,)`` numpy, the (minibatch, N/B-scaled) ELBO at the parameters *before* each of
        the T iterations taken.
      chunk_seconds: wall seconds of each jitted chunk (the first includes compilation).
      chunk_size: iterations per chunk.
      stopped_early: True if the plateau rule ended training before ``iterations``.
      num_rejected: steps rejected for a non-finite loss or gradient.
    """

    params: dict
    state: Any
    elbo: np.ndarray
    chunk_seconds: list[float]
    chunk_size: int
    stopped_early: bool
    num_rejected: int

    @property
    def iterations(self) -> int:
        return int(self.elbo.shape[0])


def default_natural_learning_rate(model: SVGP) -> float | optax.Schedule:
    """γ = 1 for a Gaussian likelihood (exact in the conjugate case), else a log-linear
    warm-up from 1e-4 to 0.1 over 5 steps (Salimbeni et al. 2018)."""
    if type(model.likelihood).__name__ == "Gaussian":
        return 1.0
    return log_linear_warmup(1e-4, 0.1, 5)


def fit(
    model: SVGP,
    params: dict,
    x: jax.Array,
    y: jax.Array,
    *,
    iterations: int = 1000,
    natural_learning_rate: float | optax.Schedule | Literal["default"] | None = "default",
    learning_rate: float | optax.Schedule = 0.01,
    other: optax.GradientTransformation | None = None,
    mode: Literal["alternating", "joint"] = "alternating",
    batch_size: int | None = None,
    key: jax.Array | None = None,
    chunk_size: int = 50,
    patience: int | None = None,
    min_delta: float = 0.1,
    progress: bool = False,
    state: HybridState | None = None,
) -> FitResult:
    """Maximize the SVGP's ELBO: natural steps on q(u), ``other`` (Adam) on the rest.

    Args:
      model: the :class:`~natgrad.gp.SVGP`.
      params: its initial parameters (``model.init``).
      x, y: all N training inputs ``(N, D)`` and targets.
      iterations: the most steps.
      natural_learning_rate: γ (float or schedule) for q's natural steps; ``"default"`` is
        :func:`default_natural_learning_rate`; None trains q with ``other`` too (plain Adam).
      learning_rate: Adam's step size when ``other`` is None.
      other: the transformation of the non-q parameters (default ``optax.adam(learning_rate)``;
        ``optax.set_to_zero()`` freezes them).
      mode: ``"alternating"`` or ``"joint"`` (:func:`hybrid`).
      batch_size: B for minibatches (without replacement, reshuffled every epoch, drawn from
        ``key``); None for the full batch. The ELBO is scaled by N/B.
      key: PRNG key for the minibatch order (required with ``batch_size``).
      chunk_size: iterations per jitted ``lax.scan`` call (and between plateau checks).
      patience, min_delta: stop when the mean ELBO of a chunk has not beaten the best chunk
        mean by more than ``min_delta`` nats for ``patience`` iterations (None: never stop).
      progress: show a progress bar (needs ``rich``).
      state: resume from this optimizer state (a previous :attr:`FitResult.state`, with
        ``params`` that run's :attr:`FitResult.params`): Adam's moments, the γ schedule's step
        count and the rejection count carry on instead of restarting. It must come from a fit
        with the same ``natural_learning_rate``, ``other`` and parameter shapes. Full-batch
        runs resume exactly (``fit(n)`` then ``fit(m, state=...)`` equals ``fit(n + m)``);
        minibatch orders restart from ``key``, so pass a fresh key to each resumed run.

    Returns:
      A :class:`FitResult` (its ``num_rejected`` counts the resumed state's rejections too).

    Raises:
      CholeskyError: K_uu stopped factorizing (names the iteration and the jitter).
      FloatingPointError: the ELBO became non-finite for another reason.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    model.check(params, x=x, y=y)
    num_data = x.shape[0]
    if iterations < 1 or chunk_size < 1:
        raise ValueError("fit: iterations and chunk_size must be positive")
    if batch_size is not None:
        if not 1 <= batch_size <= num_data:
            raise ValueError(f"fit: batch_size must be in [1, {num_data}], got {batch_size}")
        if key is None:
            raise ValueError("fit: minibatches are drawn at random: pass key=")
    if natural_learning_rate == "default":
        natural_learning_rate = default_natural_learning_rate(model)
    other = optax.adam(learning_rate) if other is None else other
    tx = hybrid(natural_learning_rate, other, model.parameterization, mode=mode)
    fresh = tx.init(params)
    if state is None:
        state = fresh
    else:
        _check_resumed_state(state, fresh)

    def loss_fn(p, xb, yb):
        return -model.elbo(p, xb, yb, num_data=num_data)

    def step(carry, idx):
        p, s = carry
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, s = tx.update(grads, s, p, value_fn=lambda q: loss_fn(q, xb, yb))
        return (optax.apply_updates(p, updates), s), -loss

    @functools.partial(jax.jit, static_argnums=3)
    def run_chunk(p, s, indices, length):
        if indices is None:
            return jax.lax.scan(lambda c, _: step(c, None), (p, s), None, length=length)
        return jax.lax.scan(step, (p, s), indices)

    order_rng = None if key is None else np.random.default_rng(np.asarray(jax.random.key_data(key)))
    pending: list[int] = []

    def next_indices(n: int) -> np.ndarray:
        while len(pending) < n * batch_size:
            pending.extend(order_rng.permutation(num_data).tolist())
        out = np.asarray(pending[: n * batch_size], dtype=np.int32).reshape(n, batch_size)
        del pending[: n * batch_size]
        return out

    history: list[np.ndarray] = []
    chunk_seconds: list[float] = []
    best, since_best, stopped_early = -math.inf, 0, False
    bar = _progress_bar(progress, iterations)
    done = 0
    try:
        while done < iterations:
            take = min(chunk_size, iterations - done)  # the last chunk may be shorter
            indices = None if batch_size is None else jnp.asarray(next_indices(take))
            start = time.perf_counter()
            (new_params, new_state), elbos = run_chunk(params, state, indices, take)
            elbos = np.asarray(jax.block_until_ready(elbos))
            chunk_seconds.append(time.perf_counter() - start)
            if not np.all(np.isfinite(elbos)):
                bad = done + int(np.argmax(~np.isfinite(elbos)))
                _raise_non_finite(model, new_params, params, bad)
            history.append(elbos)
            params, state = new_params, new_state
            done += take
            if bar is not None:
                bar[0].advance(bar[1], take)
            mean = float(np.mean(elbos))
            if mean > best + min_delta:
                best, since_best = mean, 0
            else:
                since_best += take
            if patience is not None and since_best >= patience:
                stopped_early = True
                break
    finally:
        if bar is not None:
            bar[0].stop()
    return FitResult(
        params=params,
        state=state,
        elbo=np.concatenate(history),
        chunk_seconds=chunk_seconds,
        chunk_size=chunk_size,
        stopped_early=stopped_early,
        num_rejected=int(state.num_rejected),
    )


def _check_resumed_state(state: Any, fresh: HybridState) -> None:
    """Raise unless ``state`` has the structure, shapes and dtypes of ``fresh``."""
    hint = (
        "fit: state= must be the FitResult.state of a fit of the same model with the same "
        "natural_learning_rate (None or not), other transformation and parameter shapes"
    )
    if not isinstance(state, HybridState):
        raise ValueError(f"{hint}; got {type(state).__name__}")
    got, want = jax.tree.structure(state), jax.tree.structure(fresh)
    if got != want:
        raise ValueError(f"{hint}; its tree structure differs:\n  got  {got}\n  want {want}")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(fresh), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"{hint}; leaf {jax.tree_util.keystr(path)} is "
                f"{jnp.result_type(a)}{list(jnp.shape(a))}, expected "
                f"{jnp.result_type(b)}{list(jnp.shape(b))}"
            )


def _raise_non_finite(model: SVGP, bad_params: dict, chunk_start: dict, iteration: int) -> None:
    try:
        model.check(bad_params)
    except CholeskyError as err:
        error = CholeskyError(f"fit: at iteration {iteration}: {err}")
        error.params = chunk_start
        raise error from None
    error = FloatingPointError(
        f"fit: the ELBO is not finite at iteration {iteration} (the step was rejected); check "
        "the data for extreme values, or lower the learning rates"
    )
    error.params = chunk_start
    raise error


def _progress_bar(enabled: bool, total: int) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    try:
        from rich.progress import Progress
    except ImportError:  # pragma: no cover - rich is in the demo extra
        return None
    bar = Progress(transient=True)
    bar.start()
    return bar, bar.add_task("SVGP iterations", total=total)
