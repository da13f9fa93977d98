"""One harness every natgrad optimizer passes (DESIGN.md, guideline 6).

:func:`run_harness` runs an optimizer for ``steps`` steps twice, once as a Python loop over one
jitted step and once inside :func:`jax.lax.scan`, and checks that

(a) the jitted step is traced and compiled once and never again across steps (a Python
    side-effect counter inside the traced function, and the jit cache size);
(b) every output — params, updates and state leaves — is finite after every step;
(c) the shapes and dtypes (and weak types) of params, updates and state never change, and the
    floating state leaves use the params' floating dtype (run it for float32 and float64);
(d) the optimizer converges on the small problem: ``converged(params, losses)`` holds;
(e) ``update`` rejects an unknown keyword argument with a ``TypeError`` that names it (for a
    plain :class:`optax.GradientTransformation` this is Python's own error; an optimizer taking
    ``**extra_args`` must raise it itself — note that :func:`optax.partition` and
    :func:`optax.chain` drop unknown arguments by design, so wrap nothing here);
(f) the state is a pytree of arrays, the step runs as the body of ``lax.scan`` (so its carry
    types are stable), and the scanned run matches the Python loop step for step.

Optimizers that take per-step inputs as keyword arguments of ``update`` (``batch=``, ``key=``,
...) pass ``extra_args_fn(i) -> dict`` computing them from the step index ``i`` (a traced int32
inside ``scan``, so it must be jit-compatible, e.g. ``jax.random.fold_in(key, i)``); the same
keyword arguments go to ``loss_fn(params, **extra)``, which may ignore the ones it does not use.

Each check is also a function of its own (``check_*``) for tests that need only one.

Example::

    result = run_harness(
        lambda: natgrad.natural_vi(0.5, "mean_cholesky"),
        params,
        loss_fn,
        steps=30,
        converged=loss_below(target),
    )
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

PyTree = Any
ExtraArgsFn = Callable[[jax.Array], Mapping[str, Any]]

#: The keyword argument no optimizer accepts, used by :func:`check_rejects_unknown_kwargs`.
UNKNOWN_KWARG = "not_a_natgrad_option"


@dataclasses.dataclass(frozen=True)
class HarnessResult:
    """What :func:`run_harness` saw.

    Attributes:
      params, state: after ``steps`` steps of the Python loop.
      losses: ``(steps,)`` float64: the loss at the params before each step (as the step
        computes it with the gradient; no extra evaluation, so no extra compilation).
      scan_params, scan_state, scan_losses: the same from the ``lax.scan`` run.
      num_traces: how often the jitted step was traced (1 when the harness passed).
    """

    params: PyTree
    state: PyTree
    losses: np.ndarray
    scan_params: PyTree
    scan_state: PyTree
    scan_losses: np.ndarray
    num_traces: int


def loss_below(target: float) -> Callable[[PyTree, np.ndarray], bool]:
    """A ``converged`` criterion: the loss before the last step is at most ``target``."""

    def converged(params, losses):
        del params
        return bool(losses[-1] <= target)

    return converged


# --------------------------------------------------------------------------------------------
# Single checks
# --------------------------------------------------------------------------------------------


def _with_paths(tree: PyTree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "(root)", leaf) for path, leaf in leaves]


def _aval(x) -> tuple:
    """(shape, dtype, weak_type): what jit keys its cache on for an array argument."""
    t = jax.typeof(x)
    return tuple(t.shape), np.dtype(t.dtype), bool(getattr(t, "weak_type", False))


def _signature(tree: PyTree) -> tuple:
    return jax.tree.structure(tree), tuple(_aval(leaf) for leaf in jax.tree.leaves(tree))


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def check_state_is_arrays(state: PyTree) -> None:
    """(f) Every leaf of the optimizer state is a ``jax.Array`` (so it can be a scan carry)."""
    for path, leaf in _with_paths(state):
        assert isinstance(leaf, jax.Array), (
            f"state leaf {path} is a {type(leaf).__name__}, not a jax.Array; keep the whole "
            "state a pytree of arrays so it can be jitted, scanned and checkpointed"
        )


def check_finite(tree: PyTree, *, what: str, step: int | None = None) -> None:
    """(b) Every leaf of ``tree`` is finite."""
    where = "" if step is None else f" after step {step}"
    for path, leaf in _with_paths(tree):
        arr = np.asarray(leaf)
        assert np.all(np.isfinite(arr)), f"{what} leaf {path} is not finite{where}: {arr}"


def check_same_types(
    actual: PyTree, expected: PyTree, *, what: str, step: int | None = None
) -> None:
    """(c) Same tree structure and, leaf by leaf, the same shape, dtype and weak type."""
    where = "" if step is None else f" at step {step}"
    assert jax.tree.structure(actual) == jax.tree.structure(expected), (
        f"{what} changed its tree structure{where}: {jax.tree.structure(actual)} != "
        f"{jax.tree.structure(expected)}"
    )
    for (path, a), e in zip(_with_paths(actual), jax.tree.leaves(expected), strict=True):
        assert _aval(a) == _aval(e), (
            f"{what} leaf {path} changed type{where}: (shape, dtype, weak_type) {_aval(a)} != "
            f"{_aval(e)}"
        )


def check_state_dtypes_follow_params(state: PyTree, params: PyTree) -> None:
    """(c) Floating state leaves use a floating dtype of the params (no silent float64/32)."""
    param_dtypes = {np.dtype(jnp.result_type(x)) for x in jax.tree.leaves(params) if _is_float(x)}
    for path, leaf in _with_paths(state):
        if _is_float(leaf):
            assert np.dtype(leaf.dtype) in param_dtypes, (
                f"state leaf {path} is {leaf.dtype} but the params are "
                f"{sorted(map(str, param_dtypes))}; keep the state in the params' dtype"
            )


def check_rejects_unknown_kwargs(
    tx: optax.GradientTransformation,
    grads: PyTree,
    state: PyTree,
    params: PyTree,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """(e) ``update(..., not_a_natgrad_option=...)`` raises a ``TypeError`` naming it.

    Only traced (``jax.eval_shape``): the error must come at call time, before any computation.
    """
    extra = dict(extra or {})
    bad = {**extra, UNKNOWN_KWARG: jnp.zeros(())}

    def call(g, s, p, kwargs):
        return tx.update(g, s, p, **kwargs)

    try:
        jax.eval_shape(call, grads, state, params, bad)
    except TypeError as error:
        assert UNKNOWN_KWARG in str(error), (
            f"the TypeError for an unknown keyword argument does not name it: {error}"
        )
    else:
        pytest.fail(
            f"update(..., {UNKNOWN_KWARG}=...) was accepted; a natgrad optimizer must reject "
            "unknown keyword arguments with a TypeError naming them (optax's "
            "GradientTransformationExtraArgs convention of ignoring them hides typos such as "
            "`dampnig=`)"
        )


def _tree_rel_err(actual: PyTree, expected: PyTree) -> list[tuple[str, float]]:
    errs = []
    for (path, a), e in zip(_with_paths(actual), jax.tree.leaves(expected), strict=True):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        norm = np.linalg.norm(e.ravel())
        errs.append((path, float(np.linalg.norm((a - e).ravel()) / max(norm, 1e-300))))
    return errs


def check_trees_match(actual: PyTree, expected: PyTree, *, rtol: float, what: str) -> None:
    """Integer leaves equal; floating leaves normwise-close: ‖a − e‖ ≤ rtol·‖e‖ per leaf."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for (path, a), e in zip(_with_paths(actual), jax.tree.leaves(expected), strict=True):
        if _is_float(e):
            (_, err), *_ = _tree_rel_err(a, e)
            assert err <= rtol, f"{what} leaf {path}: relative error {err:.2e} > {rtol:.1e}"
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=f"{what} {path}")


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


def default_scan_rtol(params: PyTree) -> float:
    """√ε of the smallest floating dtype of ``params``.

    The scan body and the jitted step are two XLA programs, fused differently, so they round
    differently (≈ ε per step), and the optimizer may amplify that over the run; √ε (1.5e-8 in
    float64, 3.5e-4 in float32) allows for it while any real difference (a step taken or
    skipped, a wrong step size) moves the iterates by far more.
    """
    eps = max(float(jnp.finfo(jnp.result_type(x)).eps) for x in jax.tree.leaves(params))
    return math.sqrt(eps)


def run_harness(
    make_tx: Callable[[], optax.GradientTransformation],
    params: PyTree,
    loss_fn: Callable[..., jax.Array],
    *,
    steps: int,
    converged: Callable[[PyTree, np.ndarray], bool],
    extra_args_fn: ExtraArgsFn | None = None,
    scan_rtol: float | None = None,
) -> HarnessResult:
    """Run the checks (a)–(f) of the module docstring on one optimizer and one problem.

    Args:
      make_tx: builds the optimizer (an ``optax.GradientTransformation`` or
        ``GradientTransformationExtraArgs``); called once.
      params: the initial parameters, a pytree of arrays in the dtype under test.
      loss_fn: ``loss_fn(params, **extra) -> scalar`` minimized by the optimizer; gradients are
        ``jax.grad`` of it and handed to ``update(grads, state, params, **extra)``.
      steps: number of steps (≥ 2, so that a recompilation at the second step would show).
      converged: ``converged(final_params, losses) -> bool`` with ``losses`` as in
        :class:`HarnessResult`; see :func:`loss_below`.
      extra_args_fn: ``i -> {name: array}``, per-step keyword arguments of ``update`` and
        ``loss_fn``; jit-compatible in ``i`` (int32). ``None`` for optimizers without them.
      scan_rtol: tolerance of the scan-versus-loop comparison (default
        :func:`default_scan_rtol`).

    Returns:
      A :class:`HarnessResult` for further, optimizer-specific assertions.
    """
    if steps < 2:
        raise ValueError(f"`steps` must be at least 2 to detect recompilation, got {steps}")
    extra_args_fn = extra_args_fn or (lambda i: {})
    scan_rtol = default_scan_rtol(params) if scan_rtol is None else scan_rtol
    tx = make_tx()

    state0 = tx.init(params)
    check_state_is_arrays(state0)
    check_state_dtypes_follow_params(state0, params)
    check_finite(state0, what="initial state")

    def step(params, state, extra):
        loss, grads = jax.value_and_grad(loss_fn)(params, **extra)
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state, updates, loss

    num_traces = 0

    def counted_step(params, state, extra):
        nonlocal num_traces
        num_traces += 1  # runs at trace time only
        return step(params, state, extra)

    jitted_step = jax.jit(counted_step)

    # (e) before anything runs: the signature check needs no values.
    check_rejects_unknown_kwargs(
        tx, jax.tree.map(jnp.zeros_like, params), state0, params, extra_args_fn(jnp.int32(0))
    )

    # (a)–(c): a Python loop over one jitted step.
    current, state = params, state0
    losses = []
    for i in range(steps):
        extra = extra_args_fn(jnp.int32(i))
        new, state, updates, loss = jitted_step(current, state, extra)
        check_finite(new, what="params", step=i)
        check_finite(updates, what="updates", step=i)
        check_finite(state, what="state", step=i)
        check_same_types(new, params, what="params", step=i)
        check_same_types(updates, params, what="updates", step=i)
        check_same_types(state, state0, what="state", step=i)
        losses.append(float(loss))
        current = new
    losses = np.asarray(losses, np.float64)
    assert num_traces == 1, f"the jitted step was traced {num_traces} times in {steps} steps"
    cache_size = getattr(jitted_step, "_cache_size", None)
    if cache_size is not None:  # a private jax API; the counter above is the portable check
        assert cache_size() == 1, f"the jitted step was compiled {cache_size()} times"

    # (d) convergence.
    assert np.all(np.isfinite(losses)), f"non-finite losses: {losses}"
    assert converged(current, losses), (
        f"did not converge in {steps} steps: losses {losses[0]:.6g} → {losses[-1]:.6g} "
        f"(all: {losses})"
    )

    # (f) the same steps as the body of lax.scan; carry types must be stable for scan to trace.
    def body(carry, i):
        p, s = carry
        p, s, _, loss = step(p, s, extra_args_fn(i))
        return (p, s), loss

    @jax.jit
    def scanned(p, s):
        return jax.lax.scan(body, (p, s), jnp.arange(steps, dtype=jnp.int32))

    (scan_params, scan_state), scan_losses = scanned(params, state0)
    scan_losses = np.asarray(scan_losses, np.float64)
    check_trees_match(scan_params, current, rtol=scan_rtol, what="scan vs loop: params")
    check_trees_match(scan_state, state, rtol=scan_rtol, what="scan vs loop: state")
    # Losses: normwise over the whole run, so that early steps (large losses) dominate.
    (_, loss_err), *_ = _tree_rel_err(scan_losses, losses)
    assert loss_err <= scan_rtol, f"scan vs loop: losses differ by {loss_err:.2e} (relative)"

    return HarnessResult(
        params=current,
        state=state,
        losses=losses,
        scan_params=scan_params,
        scan_state=scan_state,
        scan_losses=scan_losses,
        num_traces=num_traces,
    )
