"""Preconditioned conjugate gradients on pytrees, for Hessian-free optimization.

Solves (A + λI) x = b for a symmetric operator A given only as a function x ↦ Ax on pytrees
(a Gauss-Newton or Fisher product, say), inside one ``jax.lax.while_loop``. On top of the
textbook recurrences it carries what Hessian-free optimization (Martens 2010) needs: the
quadratic model φ at every iterate, Martens' relative-progress stopping rule, detection of
negative curvature and of non-finite values, and a few stored iterates for CG backtracking.

References:
    J. Martens, "Deep learning via Hessian-free optimization", ICML 2010, sections 4.3-4.6.
    J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006,
    Algorithms 5.2 (CG) and 5.3 (preconditioned CG).
"""

from __future__ import annotations

import enum
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PyTree = Any
Array = jax.Array

__all__ = [
    "CGCheckpoints",
    "CGInfo",
    "CGReason",
    "CGSolution",
    "checkpoint_iterations",
    "conjugate_gradient",
    "reason_message",
]


class CGReason(enum.IntEnum):
    """Why :func:`conjugate_gradient` stopped (the value of ``CGInfo.reason``)."""

    CONVERGED = 0
    """‖r‖ ≤ max(rtol·‖b‖, atol), or r = 0 exactly."""
    PROGRESS = 1
    """Martens' relative-progress criterion on φ fired."""
    MAX_ITERATIONS = 2
    """``max_iterations`` steps were taken."""
    NEGATIVE_CURVATURE = 3
    """A search direction had pᵀ(A + λI)p ≤ 0; x is the iterate before that direction."""
    NON_FINITE = 4
    """A NaN or infinity appeared; x is the last iterate whose scalars were all finite."""


_MESSAGES = {
    CGReason.CONVERGED: (
        "the residual norm reached max(rtol·‖b‖, atol) (or is exactly 0); the solve is as "
        "accurate as requested, lower rtol/atol for more."
    ),
    CGReason.PROGRESS: (
        "stopped by Martens' progress criterion: φ decreased by less than a fraction k·ε over "
        "the last k iterations. Lower progress_tolerance (or pass None) to solve more "
        "accurately."
    ),
    CGReason.MAX_ITERATIONS: (
        "reached max_iterations before the residual tolerance. Raise max_iterations, loosen "
        "rtol/atol, increase damping, or pass a preconditioner."
    ),
    CGReason.NEGATIVE_CURVATURE: (
        "found a direction p with pᵀ(A + λI)p ≤ 0: the operator is not positive definite. The "
        "iterate before that direction was returned. Increase damping, or use a positive "
        "semi-definite curvature such as Gauss-Newton or the Fisher instead of the Hessian."
    ),
    CGReason.NON_FINITE: (
        "a NaN or infinity appeared in the CG scalars; the last finite iterate was returned. "
        "Check mv, b and the preconditioner for NaN/inf, increase damping, or lower the "
        "learning rate that produced the parameters."
    ),
}


def reason_message(code: int) -> str:
    """A human-readable explanation of a :class:`CGReason` code, saying what to do about it.

    Args:
        code: a ``CGReason`` or an integer (a concrete ``CGInfo.reason``, not a tracer).

    Returns:
        One or two sentences, e.g. for ``MAX_ITERATIONS`` "... Raise max_iterations, ...".

    Raises:
        ValueError: if ``code`` is not a ``CGReason`` value.
    """
    try:
        reason = CGReason(int(code))
    except ValueError:
        valid = ", ".join(f"{r.value} ({r.name})" for r in CGReason)
        raise ValueError(f"unknown CG stop reason {code!r}; valid codes are {valid}") from None
    return f"{reason.name}: {_MESSAGES[reason]}"


class CGInfo(NamedTuple):
    """Diagnostics of one :func:`conjugate_gradient` solve (all 0-d arrays).

    Attributes:
        iterations: int32, number of CG steps taken (products with A, not counting the one
            for the residual of a warm start).
        residual_norm: ‖r‖ of the recursively updated residual r = b − (A + λI)x at the
            returned x (it can drift from the true residual by rounding).
        quadratic: φ(x) = ½xᵀ(A + λI)x − bᵀx at the returned x.
        reason: int32 :class:`CGReason` code.
        initial_quadratic: φ(x₀) at the starting point (0 for ``x0=None``).
    """

    iterations: Array
    residual_norm: Array
    quadratic: Array
    reason: Array
    initial_quadratic: Array


class CGCheckpoints(NamedTuple):
    """Iterates stored at the iterations of :func:`checkpoint_iterations`, for backtracking.

    With K stored iterations and b = −g (a Newton-type system), the model values an optimizer
    needs follow without any more products: gᵀxᵢ = −``linear`` and
    xᵢᵀ(A + λI)xᵢ = 2(``quadratic`` + ``linear``).

    Attributes:
        x: the iterates, a pytree like b with a leading axis of size K on every leaf (zeros in
            slots that were not reached).
        iteration: (K,) int32, the iteration number i of each slot, increasing.
        quadratic: (K,) φ(xᵢ) (0 where not reached).
        linear: (K,) bᵀxᵢ (0 where not reached).
        valid: (K,) bool, whether iteration i was reached (and xᵢ stored).
    """

    x: PyTree
    iteration: Array
    quadratic: Array
    linear: Array
    valid: Array


class CGSolution(NamedTuple):
    """Result of :func:`conjugate_gradient`.

    Attributes:
        x: the final iterate, a pytree with the structure, shapes and dtypes of b.
        info: a :class:`CGInfo`.
        checkpoints: a :class:`CGCheckpoints`, or None when ``num_checkpoints == 0``.
    """

    x: PyTree
    info: CGInfo
    checkpoints: CGCheckpoints | None


def checkpoint_iterations(
    max_iterations: int, num_checkpoints: int, growth: float = 1.3
) -> tuple[int, ...]:
    """The iterations at which :func:`conjugate_gradient` stores iterates (Martens 2010, §4.6).

    The distinct values of ⌈growthʲ⌉ for j = 0, 1, 2, … that do not exceed ``max_iterations``,
    of which the last (largest) ``num_checkpoints`` are kept. Fewer are returned when fewer
    exist.

    Args:
        max_iterations: the CG iteration cap (a Python int ≥ 0).
        num_checkpoints: how many to keep (a Python int ≥ 0).
        growth: the geometric factor, > 1 (Martens uses 1.3).

    Returns:
        A tuple of increasing, distinct ints in [1, max_iterations].

    Example:
        >>> checkpoint_iterations(30, 4)
        (11, 14, 18, 24)
    """
    _check_count("max_iterations", max_iterations)
    _check_count("num_checkpoints", num_checkpoints)
    if not (isinstance(growth, int | float) and math.isfinite(growth) and growth > 1.0):
        raise ValueError(f"checkpoint_growth must be a finite number > 1, got {growth!r}")
    iterations: list[int] = []
    power = 0
    while (value := math.ceil(growth**power)) <= max_iterations:
        if not iterations or value > iterations[-1]:
            iterations.append(value)
        power += 1
    return tuple(iterations[-num_checkpoints:]) if num_checkpoints else ()


def conjugate_gradient(
    mv: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    damping: float | Array = 0.0,
    x0: PyTree | None = None,
    preconditioner: Callable[[PyTree], PyTree] | None = None,
    max_iterations: int = 100,
    min_iterations: int = 0,
    rtol: float = 1e-6,
    atol: float = 0.0,
    progress_tolerance: float | None = None,
    progress_window_fraction: float = 0.1,
    min_progress_window: int = 10,
    num_checkpoints: int = 0,
    checkpoint_growth: float = 1.3,
) -> CGSolution:
    """Solve (A + λI) x = b by preconditioned conjugate gradients on pytrees.

    With the damped operator B = A + λI, the preconditioner applying P⁻¹ (SPD), and
    r₀ = b − Bx₀, z₀ = P⁻¹r₀, p₀ = z₀, each iteration i = 0, 1, … takes (Nocedal & Wright,
    Algorithm 5.3; P = I gives Algorithm 5.2)

        αᵢ = rᵢᵀzᵢ / pᵢᵀBpᵢ,   xᵢ₊₁ = xᵢ + αᵢpᵢ,   rᵢ₊₁ = rᵢ − αᵢBpᵢ,
        zᵢ₊₁ = P⁻¹rᵢ₊₁,   βᵢ = rᵢ₊₁ᵀzᵢ₊₁ / rᵢᵀzᵢ,   pᵢ₊₁ = zᵢ₊₁ + βᵢpᵢ.

    CG minimizes the quadratic model φ(x) = ½xᵀBx − bᵀx over growing Krylov spaces, so φ(xᵢ)
    decreases monotonically when B is positive definite. It is tracked from the recursive
    residual r = b − Bx at the cost of two inner products, φ(x) = −½xᵀ(b + r).

    Stopping, checked after every step (and at x₀), in this order of precedence:

    * ``CONVERGED``: ‖rᵢ‖ ≤ max(rtol·‖b‖, atol) and i ≥ ``min_iterations``; or rᵢ = 0 exactly,
      at any i, since no further step is defined.
    * ``PROGRESS`` (only with ``progress_tolerance`` ε set; Martens 2010, §4.4): with the
      window k = max(``min_progress_window``, ⌈``progress_window_fraction``·i⌉), stop when
      i > k, i ≥ ``min_iterations``, φ(xᵢ) < 0 and

          (φ(xᵢ) − φ(xᵢ₋ₖ)) / φ(xᵢ) < k·ε.

      The left side is the relative decrease of φ over the last k iterations; Martens uses
      ε = 5·10⁻⁴ with k = max(10, 0.1·i). A history of φ of length ``max_iterations + 1`` is
      carried for it.
    * ``MAX_ITERATIONS``: i = ``max_iterations``.
    * ``NEGATIVE_CURVATURE``: pᵢᵀBpᵢ ≤ 0 (B is not positive definite along pᵢ). The step is not
      taken: x = xᵢ.
    * ``NON_FINITE``: a NaN or infinity in pᵢᵀBpᵢ, αᵢ, ‖rᵢ₊₁‖², rᵢ₊₁ᵀzᵢ₊₁, βᵢ or φ(xᵢ₊₁) (a
      non-finite entry of xᵢ₊₁ or rᵢ₊₁ shows up in these). The step is not taken: x = xᵢ. At
      i = 0 this also covers a non-finite b or r₀.

    With ``num_checkpoints`` K > 0, the iterates xᵢ at the K iterations
    ``checkpoint_iterations(max_iterations, K, checkpoint_growth)`` are stored along with
    φ(xᵢ) and bᵀxᵢ, for Martens' CG backtracking (§4.6); the final iterate is always ``x``.

    Everything runs in one ``lax.while_loop`` whose carry types do not depend on the data, so
    the solve can be jitted, vmapped (over b, x0 or damping) and used as a ``lax.scan`` body.
    Scalars are computed in the real dtype of b's leaves (float32 stays float32; Python floats
    for damping and tolerances are cast to it), and ``mv``/``preconditioner`` outputs are cast
    to the dtype of their inputs. Inner products are sums over leaves of ``jnp.vdot`` (real part,
    at highest precision); nothing is raveled.

    Args:
        mv: the product v ↦ Av with a symmetric (PSD expected) A, mapping a pytree like b to a
            pytree of the same structure and shapes.
        b: the right-hand side, a pytree of floating arrays of any shapes.
        damping: λ ≥ 0 added to A (a Python float or a 0-d array, which may be traced).
        x0: the starting point, a pytree like b (cast to b's dtypes); None starts from zeros
            and saves one product.
        preconditioner: v ↦ P⁻¹v for an SPD preconditioner P, a pytree map like ``mv``; None
            for no preconditioning.
        max_iterations: static cap on the number of CG steps (≥ 0).
        min_iterations: static; the residual and progress criteria do not stop before this many
            steps (≤ ``max_iterations``).
        rtol, atol: residual tolerances, stop when ‖r‖ ≤ max(rtol·‖b‖, atol).
        progress_tolerance: ε of Martens' criterion; None disables it.
        progress_window_fraction: the fraction 0.1 in k = max(10, ⌈0.1·i⌉).
        min_progress_window: the 10 in k = max(10, ⌈0.1·i⌉) (≥ 1).
        num_checkpoints: static number K of stored iterates; 0 stores none.
        checkpoint_growth: the growth factor of the checkpoint iterations (> 1).

    Returns:
        A :class:`CGSolution` ``(x, info, checkpoints)``: ``x`` like b, ``info`` a
        :class:`CGInfo` of 0-d arrays, ``checkpoints`` a :class:`CGCheckpoints` with leading
        axis K = ``len(checkpoint_iterations(...))`` or None when ``num_checkpoints == 0``.

    Raises:
        ValueError/TypeError: for invalid static options, a b without floating leaves, or an
            ``mv``/``preconditioner``/``x0`` whose structure or shapes differ from b's.

    Example:
        >>> import jax.numpy as jnp
        >>> from natgrad.solvers import CGReason, conjugate_gradient
        >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
        >>> b = {"w": jnp.array([1.0, 2.0])}
        >>> sol = conjugate_gradient(lambda v: {"w": a @ v["w"]}, b, rtol=1e-6)
        >>> CGReason(int(sol.info.reason)).name, int(sol.info.iterations)
        ('CONVERGED', 2)
        >>> bool(jnp.allclose(a @ sol.x["w"], b["w"], atol=1e-5))
        True

    References:
        J. Martens, "Deep learning via Hessian-free optimization", ICML 2010.
        J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed., 2006, Alg. 5.2 and 5.3.
    """
    _check_count("max_iterations", max_iterations)
    _check_count("min_iterations", min_iterations)
    _check_count("num_checkpoints", num_checkpoints)
    _check_count("min_progress_window", min_progress_window)
    if min_iterations > max_iterations:
        raise ValueError(
            f"min_iterations ({min_iterations}) must not exceed max_iterations ({max_iterations})"
        )
    if min_progress_window < 1:
        raise ValueError(f"min_progress_window must be ≥ 1, got {min_progress_window}")
    if not (math.isfinite(progress_window_fraction) and progress_window_fraction >= 0):
        raise ValueError(
            f"progress_window_fraction must be finite and ≥ 0, got {progress_window_fraction!r}"
        )
    if jnp.ndim(damping) != 0:
        raise ValueError(f"damping must be a scalar, got shape {jnp.shape(damping)}")
    checkpoint_its = checkpoint_iterations(max_iterations, num_checkpoints, checkpoint_growth)

    b = jax.tree_util.tree_map(jnp.asarray, b)
    leaves = jax.tree_util.tree_leaves(b)
    if not leaves:
        raise ValueError("b has no array leaves; conjugate_gradient needs a non-empty pytree")
    if not all(jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves):
        dtypes = sorted({str(leaf.dtype) for leaf in leaves})
        raise TypeError(f"b must have floating (or complex) leaves, got dtypes {dtypes}")
    real = jnp.finfo(jnp.result_type(*leaves)).dtype
    zero = jnp.zeros((), real)
    lam = jnp.asarray(damping, real)
    vdot = functools.partial(_vdot, dtype=real)

    def damped(v: PyTree) -> PyTree:
        return _axpy(lam, v, _conform(mv(v), v, "mv"))

    def precondition(r: PyTree) -> PyTree:
        return r if preconditioner is None else _conform(preconditioner(r), r, "preconditioner")

    def inner_rz(r: PyTree, rr: Array, z: PyTree) -> Array:
        return rr if preconditioner is None else vdot(r, z)

    if x0 is None:
        x = jax.tree_util.tree_map(jnp.zeros_like, b)
        r = b
        linear0 = phi0 = zero
    else:
        x = _conform(x0, b, "x0")
        r = jax.tree_util.tree_map(operator.sub, b, damped(x))
        linear0 = vdot(x, b)
        phi0 = -0.5 * (linear0 + vdot(x, r))
    z = precondition(r)
    rr = vdot(r, r)
    rz = inner_rz(r, rr, z)
    tol = jnp.maximum(jnp.asarray(rtol, real) * jnp.sqrt(vdot(b, b)), jnp.asarray(atol, real))
    tol_sq = tol * tol

    track_progress = progress_tolerance is not None
    if track_progress:
        windows = [
            max(min_progress_window, math.ceil(round(progress_window_fraction * i, 9)))
            for i in range(max_iterations + 1)
        ]
        window_table = jnp.asarray(windows, jnp.int32)
        eligible_table = jnp.asarray(
            [i > k and i >= min_iterations for i, k in enumerate(windows)], bool
        )
        eps = jnp.asarray(progress_tolerance, real)
        history = jnp.zeros(max_iterations + 1, real).at[0].set(phi0)
    else:
        history = None

    def stop(i: Array, rr: Array, phi: Array, history: Array | None) -> tuple[Array, Array]:
        """(done, reason) for iterate i, from the residual, progress and iteration-cap rules."""
        converged = ((rr <= tol_sq) & (i >= min_iterations)) | (rr == 0)
        stalled = jnp.zeros((), bool)
        if track_progress:
            k = window_table[i]
            earlier = history[jnp.maximum(i - k, 0)]
            # (φᵢ − φᵢ₋ₖ)/φᵢ < kε, multiplied through by φᵢ < 0.
            stalled = eligible_table[i] & (phi < 0) & (phi - earlier > k.astype(real) * eps * phi)
        capped = i >= max_iterations
        reason = jnp.where(
            converged,
            CGReason.CONVERGED,
            jnp.where(stalled, CGReason.PROGRESS, CGReason.MAX_ITERATIONS),
        ).astype(jnp.int32)
        return converged | stalled | capped, reason

    i0 = jnp.zeros((), jnp.int32)
    done0, reason0 = stop(i0, rr, phi0, history)
    finite0 = jnp.isfinite(rr) & jnp.isfinite(rz) & jnp.isfinite(phi0) & jnp.isfinite(tol)
    done0 = done0 | ~finite0
    reason0 = jnp.where(finite0, reason0, CGReason.NON_FINITE).astype(jnp.int32)

    num_slots = len(checkpoint_its)
    if num_checkpoints:
        slots = np.full(max_iterations + 1, -1, np.int32)
        slots[list(checkpoint_its)] = np.arange(num_slots, dtype=np.int32)
        slot_table = jnp.asarray(slots)
        checkpoints = CGCheckpoints(
            x=jax.tree_util.tree_map(
                lambda leaf: jnp.zeros((num_slots, *leaf.shape), leaf.dtype), b
            ),
            iteration=jnp.asarray(checkpoint_its, jnp.int32).reshape(num_slots),
            quadratic=jnp.zeros(num_slots, real),
            linear=jnp.zeros(num_slots, real),
            valid=jnp.zeros(num_slots, bool),
        )
    else:
        checkpoints = None

    init = _State(
        i=i0,
        x=x,
        r=r,
        p=z,
        rz=rz,
        rr=rr,
        phi=phi0,
        done=done0,
        reason=reason0,
        history=history,
        checkpoints=checkpoints,
    )

    def body(s: _State) -> _State:
        bp = damped(s.p)
        curvature = vdot(s.p, bp)
        alpha = s.rz / curvature
        x = _axpy(alpha, s.p, s.x)
        r = _axpy(-alpha, bp, s.r)
        z = precondition(r)
        rr = vdot(r, r)
        rz = inner_rz(r, rr, z)
        beta = rz / s.rz
        p = _axpy(beta, s.p, z)
        linear = vdot(x, b)
        phi = -0.5 * (linear + vdot(x, r))

        negative = jnp.isfinite(curvature) & (curvature <= 0)
        finite = functools.reduce(
            operator.and_, [jnp.isfinite(v) for v in (curvature, alpha, rr, rz, beta, phi)]
        )
        accept = finite & ~negative
        i = s.i + 1
        history = s.history
        if track_progress:
            history = history.at[jnp.minimum(i, max_iterations)].set(phi)
        done, reason = stop(i, rr, phi, history)
        rejected_reason = jnp.where(negative, CGReason.NEGATIVE_CURVATURE, CGReason.NON_FINITE)

        checkpoints = s.checkpoints
        if checkpoints is not None and num_slots:
            slot = slot_table[jnp.minimum(i, max_iterations)]
            checkpoints = _store(
                checkpoints, jnp.maximum(slot, 0), accept & (slot >= 0), x, phi, linear
            )

        def keep(new: PyTree, old: PyTree) -> PyTree:
            return jax.tree_util.tree_map(lambda n, o: jnp.where(accept, n, o), new, old)

        return _State(
            i=keep(i, s.i),
            x=keep(x, s.x),
            r=keep(r, s.r),
            p=keep(p, s.p),
            rz=keep(rz, s.rz),
            rr=keep(rr, s.rr),
            phi=keep(phi, s.phi),
            done=done | ~accept,
            reason=jnp.where(accept, reason, rejected_reason).astype(jnp.int32),
            history=history,
            checkpoints=checkpoints,
        )

    final = lax.while_loop(lambda s: ~s.done, body, init)
    info = CGInfo(
        iterations=final.i,
        residual_norm=jnp.sqrt(final.rr),
        quadratic=final.phi,
        reason=final.reason,
        initial_quadratic=phi0,
    )
    return CGSolution(x=final.x, info=info, checkpoints=final.checkpoints)


class _State(NamedTuple):
    i: Array
    x: PyTree
    r: PyTree
    p: PyTree
    rz: Array
    rr: Array
    phi: Array
    done: Array
    reason: Array
    history: Array | None
    checkpoints: CGCheckpoints | None


def _store(
    checkpoints: CGCheckpoints, slot: Array, write: Array, x: PyTree, phi: Array, linear: Array
) -> CGCheckpoints:
    """Write (xᵢ, φᵢ, bᵀxᵢ) into ``slot`` when ``write`` is true, else leave the slot as it is."""

    def put(buffer: Array, value: Array) -> Array:
        current = lax.dynamic_index_in_dim(buffer, slot, axis=0, keepdims=False)
        return lax.dynamic_update_index_in_dim(buffer, jnp.where(write, value, current), slot, 0)

    return checkpoints._replace(
        x=jax.tree_util.tree_map(put, checkpoints.x, x),
        quadratic=put(checkpoints.quadratic, phi),
        linear=put(checkpoints.linear, linear),
        valid=put(checkpoints.valid, jnp.ones((), bool)),
    )


def _vdot(a: PyTree, b: PyTree, *, dtype: Any) -> Array:
    """Re Σ_leaves vdot(a, b) in ``dtype``."""
    parts = [
        jnp.real(jnp.vdot(u, v, precision=lax.Precision.HIGHEST)).astype(dtype)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    ]
    return functools.reduce(operator.add, parts)


def _axpy(alpha: Array, x: PyTree, y: PyTree) -> PyTree:
    """αx + y leafwise, with α cast to each leaf's dtype so that nothing is promoted."""
    return jax.tree_util.tree_map(lambda u, v: alpha.astype(u.dtype) * u + v, x, y)


def _conform(tree: PyTree, like: PyTree, name: str) -> PyTree:
    """Check that ``tree`` matches ``like`` in structure and shapes; cast to its dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    like_leaves, like_treedef = jax.tree_util.tree_flatten(like)
    if treedef != like_treedef:
        raise ValueError(
            f"`{name}` must return/be a pytree with the structure of b: expected "
            f"{like_treedef}, got {treedef}"
        )
    for index, (leaf, ref) in enumerate(zip(leaves, like_leaves, strict=True)):
        if jnp.shape(leaf) != ref.shape:
            raise ValueError(
                f"`{name}` leaf {index} has shape {jnp.shape(leaf)} but the matching leaf of b "
                f"has shape {ref.shape}"
            )
    cast = [
        jnp.asarray(leaf).astype(ref.dtype) for leaf, ref in zip(leaves, like_leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, cast)


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative Python int (static), got {value!r}")
