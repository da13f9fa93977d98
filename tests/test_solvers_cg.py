"""Tests of the pytree conjugate-gradient solver against dense float64 linear algebra.

The operator is a dense symmetric matrix applied to a pytree by raveling it here in the test (the
solver itself never ravels). Tolerances are stated with their reasons next to each assertion.
"""

from __future__ import annotations

import doctest
import functools
import math
import operator

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from natgrad.solvers import (  # noqa: E402
    CGCheckpoints,
    CGInfo,
    CGReason,
    CGSolution,
    checkpoint_iterations,
    conjugate_gradient,
    reason_message,
)
from natgrad.solvers import cg as cg_module  # noqa: E402

SHAPES = {"w": (3, 4), "b": (5,)}  # n = 17
SHAPES_40 = {"w": (5, 6), "b": (10,)}  # n = 40, for the ill-conditioned problem
N = 17

# ---------------------------------------------------------------------------------------------
# Dense references
# ---------------------------------------------------------------------------------------------


def random_tree(rng: np.random.Generator, shapes=SHAPES, batch=(), dtype=np.float64) -> dict:
    return {k: jnp.asarray(rng.standard_normal(batch + s), dtype) for k, s in shapes.items()}


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def unflat(vector, like) -> dict:
    return ravel_pytree(like)[1](jnp.asarray(vector))


def spd(rng: np.random.Generator, eigenvalues) -> np.ndarray:
    """Q diag(eigenvalues) Qᵀ with Haar-random Q, symmetric to the last bit."""
    n = len(eigenvalues)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))
    a = (q * np.asarray(eigenvalues)) @ q.T
    return 0.5 * (a + a.T)


def random_spd(rng: np.random.Generator, n: int = N) -> np.ndarray:
    """Condition number ≤ 100: eigenvalues uniform in [1, 100]."""
    return spd(rng, rng.uniform(1.0, 100.0, n))


def dense_mv(a, like):
    unravel = ravel_pytree(like)[1]
    return lambda v: unravel(a @ ravel_pytree(v)[0])


def dense_solution(a, b, damping=0.0) -> np.ndarray:
    return np.asarray(jnp.linalg.solve(a + damping * jnp.eye(a.shape[0]), flat(b)))


def dense_quadratic(a, b, x, damping=0.0) -> float:
    """φ(x) = ½xᵀ(A + λI)x − bᵀx."""
    x, b = flat(x), flat(b)
    return float(0.5 * x @ (a @ x + damping * x) - b @ x)


def rel_err(x, reference) -> float:
    return float(np.linalg.norm(flat(x) - reference) / np.linalg.norm(reference))


@functools.partial(
    jax.jit,
    static_argnames=(
        "jacobi",
        "max_iterations",
        "min_iterations",
        "progress_tolerance",
        "num_checkpoints",
        "checkpoint_growth",
    ),
)
def solve(
    a,
    b,
    *,
    damping=0.0,
    x0=None,
    rtol=1e-12,
    jacobi=False,
    max_iterations=100,
    min_iterations=0,
    progress_tolerance=None,
    num_checkpoints=0,
    checkpoint_growth=1.3,
) -> CGSolution:
    """CG on dense ``a`` acting on pytrees like ``b``; a, b, damping, x0 and rtol are traced."""
    preconditioner = dense_mv(jnp.diag(1.0 / jnp.diag(a)), b) if jacobi else None
    return conjugate_gradient(
        dense_mv(a, b),
        b,
        damping=damping,
        x0=x0,
        rtol=rtol,
        preconditioner=preconditioner,
        max_iterations=max_iterations,
        min_iterations=min_iterations,
        progress_tolerance=progress_tolerance,
        num_checkpoints=num_checkpoints,
        checkpoint_growth=checkpoint_growth,
    )


def reason(solution: CGSolution) -> CGReason:
    return CGReason(int(solution.info.reason))


# ---------------------------------------------------------------------------------------------
# Accuracy against dense solves
# ---------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), damping=st.sampled_from([0.0, 0.3, 25.0]))
def test_matches_dense_solve(seed, damping):
    rng = np.random.default_rng(seed)
    a, b = random_spd(rng), random_tree(rng)
    sol = solve(a, b, damping=damping, rtol=1e-12)
    assert reason(sol) == CGReason.CONVERGED
    assert jax.tree.structure(sol.x) == jax.tree.structure(b)
    assert sol.checkpoints is None
    # ‖x − x*‖/‖x*‖ ≤ κ·‖r‖/‖b‖ ≤ 100·1e-12 for the true residual; the recursive residual drifts
    # from it by ~κ·ε per iteration. 1e-8 leaves two orders of margin.
    assert rel_err(sol.x, dense_solution(a, b, damping)) < 1e-8
    assert float(sol.info.residual_norm) <= 1e-12 * np.linalg.norm(flat(b))
    # φ from the recursive residual, −½xᵀ(b + r), vs the dense ½xᵀ(A+λI)x − bᵀx: both sides are
    # O(‖b‖‖x‖) ≈ |φ| with rounding ~n·ε relative; 1e-10 allows the residual drift.
    np.testing.assert_allclose(
        float(sol.info.quadratic), dense_quadratic(a, b, sol.x, damping), rtol=1e-10
    )
    assert float(sol.info.initial_quadratic) == 0.0  # x₀ = 0 exactly


def test_damping_as_traced_array_matches_shifted_solve():
    rng = np.random.default_rng(1)
    a, b = random_spd(rng), random_tree(rng)
    for damping in (0.0, 2.5, jnp.asarray(40.0)):
        sol = solve(a, b, damping=damping)
        assert reason(sol) == CGReason.CONVERGED
        assert rel_err(sol.x, dense_solution(a, b, float(damping))) < 1e-8  # as above


def test_quadratic_with_warm_start():
    rng = np.random.default_rng(2)
    a, b, x0 = random_spd(rng), random_tree(rng), random_tree(rng)
    for max_iterations in (100, 4):  # converged, and a truncated solve far from x*
        sol = solve(a, b, damping=0.7, x0=x0, max_iterations=max_iterations)
        # Same reasoning as in test_matches_dense_solve: rounding of O(|φ|) terms.
        np.testing.assert_allclose(
            float(sol.info.initial_quadratic), dense_quadratic(a, b, x0, 0.7), rtol=1e-10
        )
        np.testing.assert_allclose(
            float(sol.info.quadratic), dense_quadratic(a, b, sol.x, 0.7), rtol=1e-10
        )
        assert float(sol.info.quadratic) < float(sol.info.initial_quadratic)
    assert reason(sol) == CGReason.MAX_ITERATIONS


def test_warm_start_from_solution_returns_immediately():
    rng = np.random.default_rng(3)
    a, b = random_spd(rng), random_tree(rng)
    exact = unflat(dense_solution(a, b), b)
    # r₀ = b − Ax* is rounding, ~κ·ε‖b‖ ≪ 1e-10‖b‖.
    sol = solve(a, b, x0=exact, rtol=1e-10)
    assert reason(sol) == CGReason.CONVERGED
    assert int(sol.info.iterations) == 0
    assert all(np.array_equal(u, v) for u, v in zip(flat(sol.x), flat(exact), strict=True))


def test_warm_start_near_solution_takes_fewer_iterations():
    rng = np.random.default_rng(4)
    a, b = random_spd(rng), random_tree(rng)
    reference = dense_solution(a, b)
    near = reference + 1e-5 * np.linalg.norm(reference) / math.sqrt(N) * rng.standard_normal(N)
    cold = solve(a, b, rtol=1e-6)
    warm = solve(a, b, x0=unflat(near, b), rtol=1e-6)
    assert reason(cold) == reason(warm) == CGReason.CONVERGED
    # The warm start's residual is already ~1e-4‖b‖, two decades from the target; the cold start
    # needs six.
    assert int(warm.info.iterations) < int(cold.info.iterations) - 3
    assert rel_err(warm.x, reference) < 1e-4  # κ·rtol = 1e-4 bounds the error


def test_jacobi_preconditioner_on_badly_scaled_matrix():
    rng = np.random.default_rng(5)
    off = rng.uniform(-1.0, 1.0, (N, N))
    m = np.eye(N) + 0.25 / N * (off + off.T)  # diagonally dominant, κ(M) < 2
    scale = np.logspace(-1.5, 1.5, N)
    rng.shuffle(scale)
    a = scale[:, None] * m * scale[None, :]  # κ(A) ≈ 1e6, but κ(D⁻½AD⁻½) ≈ κ(M)
    b = random_tree(rng)
    plain = solve(a, b, rtol=1e-12)
    jacobi = solve(a, b, rtol=1e-12, jacobi=True)
    assert reason(jacobi) == CGReason.CONVERGED
    # Without the preconditioner the scaling costs ~40 iterations instead of ~12.
    assert 2 * int(jacobi.info.iterations) < int(plain.info.iterations)
    # Error ≤ κ(A)·rtol ≈ 1e-6 in the worst case, but the residual is small in every direction,
    # so the actual error is ~1e-14; 1e-8 as for the well-conditioned solves.
    assert rel_err(jacobi.x, dense_solution(a, b)) < 1e-8


def test_max_iterations_cap():
    rng = np.random.default_rng(6)
    a, b = random_spd(rng), random_tree(rng)
    sol = solve(a, b, rtol=0.0, max_iterations=4)
    assert reason(sol) == CGReason.MAX_ITERATIONS
    assert int(sol.info.iterations) == 4
    zero = solve(a, b, rtol=0.0, max_iterations=0)
    assert reason(zero) == CGReason.MAX_ITERATIONS
    assert int(zero.info.iterations) == 0
    assert not np.any(flat(zero.x))


def test_min_iterations_delays_the_residual_stop():
    rng = np.random.default_rng(7)
    a, b = random_spd(rng), random_tree(rng)
    loose = solve(a, b, rtol=1e-2)
    assert int(loose.info.iterations) < 12
    held = solve(a, b, rtol=1e-2, min_iterations=12, max_iterations=30)
    assert reason(held) == CGReason.CONVERGED
    assert int(held.info.iterations) == 12


# ---------------------------------------------------------------------------------------------
# Breakdowns
# ---------------------------------------------------------------------------------------------


def test_indefinite_matrix_stops_on_negative_curvature():
    rng = np.random.default_rng(8)
    a = spd(rng, np.concatenate([[-50.0], rng.uniform(1.0, 100.0, N - 1)]))
    b = random_tree(rng)
    sol = solve(a, b)
    assert reason(sol) == CGReason.NEGATIVE_CURVATURE
    # Sylvester's law: the pivots pᵢᵀApᵢ of the Lanczos factorization carry A's negative
    # eigenvalue, so it shows up before step n.
    iterations = int(sol.info.iterations)
    assert iterations < N
    assert np.all(np.isfinite(flat(sol.x)))
    before = solve(a, b, rtol=0.0, max_iterations=iterations)  # the same iterate, not stepped past
    np.testing.assert_allclose(flat(sol.x), flat(before.x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(float(sol.info.quadratic), float(before.info.quadratic), rtol=1e-12)
    # Damping past the negative eigenvalue makes the system positive definite again.
    damped = solve(a, b, damping=60.0)
    assert reason(damped) == CGReason.CONVERGED
    assert rel_err(damped.x, dense_solution(a, b, 60.0)) < 1e-8


def test_nan_in_matrix_stops_with_finite_x():
    rng = np.random.default_rng(9)
    a, b = random_spd(rng), random_tree(rng)
    a[3, 5] = a[5, 3] = np.nan
    sol = solve(a, b)
    assert reason(sol) == CGReason.NON_FINITE
    assert int(sol.info.iterations) == 0
    assert not np.any(flat(sol.x))  # x₀ = 0, the last finite iterate
    assert np.isfinite(float(sol.info.quadratic))


def test_late_nan_returns_last_finite_iterate():
    """mv turns NaN only once the Krylov space reaches coordinate 0 (b₀ = 0): after one step."""
    rng = np.random.default_rng(10)
    a, b = random_spd(rng), random_tree(rng)
    b = unflat(flat(b) * (np.arange(N) != 0), b)

    @jax.jit
    def poisoned(a, b):
        clean = dense_mv(a, b)

        def mv(v):
            nan = jnp.where(ravel_pytree(v)[0][0] != 0, jnp.nan, 0.0)
            return jax.tree.map(lambda leaf: leaf + nan, clean(v))

        return conjugate_gradient(mv, b, rtol=1e-12)

    sol = poisoned(a, b)
    assert reason(sol) == CGReason.NON_FINITE
    assert int(sol.info.iterations) == 1
    first = solve(a, b, rtol=0.0, max_iterations=1)
    np.testing.assert_allclose(flat(sol.x), flat(first.x), rtol=1e-12, atol=0)
    assert np.all(np.isfinite(flat(sol.x)))


# ---------------------------------------------------------------------------------------------
# Martens' progress criterion and checkpoints
# ---------------------------------------------------------------------------------------------


def test_progress_criterion_stops_early_on_ill_conditioned_problem():
    eps = 5e-4
    rng = np.random.default_rng(0)
    a = spd(rng, np.logspace(-6.0, 0.0, 40))
    b = random_tree(rng, SHAPES_40)
    full = solve(a, b, rtol=1e-10, max_iterations=300)
    early = solve(a, b, rtol=1e-10, max_iterations=300, progress_tolerance=eps)
    assert reason(full) == CGReason.CONVERGED
    assert reason(early) == CGReason.PROGRESS
    i = int(early.info.iterations)
    # CG loses orthogonality at κ = 1e6 and needs ~240 iterations for the residual; φ stalls
    # after ~100.
    assert i < 0.6 * int(full.info.iterations)

    def phi_at(iteration):
        return float(solve(a, b, rtol=0.0, max_iterations=iteration).info.quadratic)

    def window(iteration):
        return max(10, math.ceil(0.1 * iteration))

    phi = float(early.info.quadratic)
    k = window(i)
    assert phi < 0 and (phi - phi_at(i - k)) / phi < k * eps  # the criterion holds at i ...
    previous = phi_at(i - 1)  # ... and did not one iteration earlier
    assert (previous - phi_at(i - 1 - window(i - 1))) / previous >= window(i - 1) * eps
    # The rule is a stall detector, not a bound: if the gap φ − φ* shrinks by a factor q per
    # window, the rule implies (φ − φ*)/|φ| < kε·q/(1 − q). q ≤ 0.9 (seen here: the gap is ~2kε)
    # gives the bound 9kε; the full solve gets φ* to 1e-9.
    optimum = dense_quadratic(a, b, unflat(dense_solution(a, b), b))
    np.testing.assert_allclose(float(full.info.quadratic), optimum, rtol=1e-9)
    assert 0 < (phi - optimum) / abs(optimum) < 9 * k * eps


def test_checkpoints_store_the_iterates():
    rng = np.random.default_rng(11)
    a, b, x0 = random_spd(rng), random_tree(rng), random_tree(rng)
    its = checkpoint_iterations(30, 4, 1.3)
    assert its == (11, 14, 18, 24)
    sol = solve(a, b, damping=0.2, x0=x0, rtol=1e-10, max_iterations=30, num_checkpoints=4)
    assert isinstance(sol.checkpoints, CGCheckpoints)
    ck = sol.checkpoints
    assert ck.iteration.dtype == jnp.int32 and tuple(np.asarray(ck.iteration)) == its
    assert jax.tree.map(jnp.shape, ck.x) == {k: (4, *s) for k, s in SHAPES.items()}
    final = int(sol.info.iterations)
    assert reason(sol) == CGReason.CONVERGED and 14 <= final < 18  # finite termination at n = 17
    np.testing.assert_array_equal(np.asarray(ck.valid), np.asarray(its) <= final)
    for slot, iteration in enumerate(its):
        xi = jax.tree.map(operator.itemgetter(slot), ck.x)
        if iteration > final:
            assert not np.any(flat(xi)) and float(ck.quadratic[slot]) == 0.0
            continue
        reference = solve(a, b, damping=0.2, x0=x0, rtol=0.0, max_iterations=iteration)
        # The same arithmetic in a differently sized loop: equal up to rounding.
        np.testing.assert_allclose(flat(xi), flat(reference.x), rtol=1e-12, atol=1e-14)
        # Rounding of O(|φ|) terms, as in test_matches_dense_solve.
        np.testing.assert_allclose(
            float(ck.quadratic[slot]), dense_quadratic(a, b, xi, 0.2), rtol=1e-10
        )
        np.testing.assert_allclose(float(ck.linear[slot]), flat(b) @ flat(xi), rtol=1e-12)
        # xᵢᵀ(A+λI)xᵢ = 2(φ + bᵀxᵢ), as an optimizer recovers it.
        curvature = 2 * (float(ck.quadratic[slot]) + float(ck.linear[slot]))
        np.testing.assert_allclose(
            curvature, flat(xi) @ (a + 0.2 * np.eye(N)) @ flat(xi), rtol=1e-10
        )


def test_checkpoint_iterations_examples():
    assert checkpoint_iterations(30, 100) == (1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 24)
    assert checkpoint_iterations(30, 0) == ()
    assert checkpoint_iterations(0, 3) == ()
    assert checkpoint_iterations(10, 3, growth=2.0) == (2, 4, 8)
    with pytest.raises(ValueError, match="growth"):
        checkpoint_iterations(10, 3, growth=1.0)
    with pytest.raises(ValueError, match="num_checkpoints"):
        checkpoint_iterations(10, -1)


@settings(max_examples=20, deadline=None)
@given(
    max_iterations=st.integers(0, 500),
    num=st.integers(0, 30),
    growth=st.floats(1.05, 3.0),
)
def test_checkpoint_iterations_properties(max_iterations, num, growth):
    its = checkpoint_iterations(max_iterations, num, growth)
    every, power = set(), 0
    while growth**power <= max_iterations:
        every.add(math.ceil(growth**power))
        power += 1
    every = sorted(v for v in every if v <= max_iterations)
    assert its == (tuple(every[-num:]) if num else ())


def test_no_checkpoints_without_iterations():
    rng = np.random.default_rng(12)
    a, b = random_spd(rng), random_tree(rng)
    sol = solve(a, b, max_iterations=0, num_checkpoints=3)
    assert sol.checkpoints.valid.shape == (0,)
    assert jax.tree.map(jnp.shape, sol.checkpoints.x) == {k: (0, *s) for k, s in SHAPES.items()}


# ---------------------------------------------------------------------------------------------
# Transformations and dtypes
# ---------------------------------------------------------------------------------------------


def test_eager_matches_jit():
    rng = np.random.default_rng(13)
    a, b = random_spd(rng), random_tree(rng)
    eager = conjugate_gradient(dense_mv(a, b), b, damping=0.5, rtol=1e-12)
    jitted = solve(a, b, damping=0.5, rtol=1e-12)
    assert int(eager.info.iterations) == int(jitted.info.iterations)
    # Same operations; XLA may fuse the jitted ones differently.
    np.testing.assert_allclose(flat(eager.x), flat(jitted.x), rtol=1e-12)


def test_solve_as_scan_body_with_warm_start_carry():
    rng = np.random.default_rng(14)
    a = random_spd(rng)
    b0 = random_tree(rng)
    drift = random_tree(rng, batch=(5,))
    bs = jax.tree.map(lambda base, d: base + 0.01 * d, b0, drift)  # slowly varying right sides

    @jax.jit
    def run(a, bs):
        def step(x, b):
            sol = conjugate_gradient(
                dense_mv(a, b), b, x0=x, damping=0.1, rtol=1e-10, num_checkpoints=2
            )
            return sol.x, (sol.x, sol.info)

        x_init = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype), bs)
        return jax.lax.scan(step, x_init, bs)

    last, (xs, infos) = run(a, bs)
    assert isinstance(infos, CGInfo)
    assert np.all(np.asarray(infos.reason) == CGReason.CONVERGED)
    for t in range(5):
        b_t = jax.tree.map(operator.itemgetter(t), bs)
        x_t = jax.tree.map(operator.itemgetter(t), xs)
        assert rel_err(x_t, dense_solution(a, b_t, 0.1)) < 1e-8  # κ·rtol ≈ 1e-8 at most
    # Warm starts from the previous solution need fewer steps than the cold first solve.
    assert np.all(np.asarray(infos.iterations[1:]) < int(infos.iterations[0]))
    np.testing.assert_array_equal(flat(last), flat(jax.tree.map(operator.itemgetter(4), xs)))


def test_float32_in_float32_out():
    rng = np.random.default_rng(15)
    a64 = random_spd(rng)
    a = jnp.asarray(a64, jnp.float32)
    b = random_tree(rng, dtype=np.float32)
    x0 = random_tree(rng, dtype=np.float32)

    def run(b, x0):
        # Python floats for every option: none of them may promote to float64.
        return conjugate_gradient(
            dense_mv(a, b),
            b,
            x0=x0,
            damping=0.1,
            rtol=1e-5,
            atol=1e-30,
            progress_tolerance=5e-4,
            num_checkpoints=2,
            max_iterations=50,
        )

    assert "f64" not in str(jax.make_jaxpr(run)(b, x0))
    sol = jax.jit(run)(b, x0)
    floats = [*jax.tree.leaves(sol.x), *jax.tree.leaves(sol.checkpoints.x)]
    floats += [sol.info.residual_norm, sol.info.quadratic, sol.info.initial_quadratic]
    floats += [sol.checkpoints.quadratic, sol.checkpoints.linear]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    assert sol.info.iterations.dtype == sol.info.reason.dtype == jnp.int32
    # float32 CG with κ ≈ 100: error ~κ·(rtol + ε_f32·iterations) ≈ 1e-3 at most; typically 1e-5.
    assert rel_err(sol.x, dense_solution(a64, jax.tree.map(np.float64, b), 0.1)) < 1e-3


def test_vmap_over_right_hand_sides():
    rng = np.random.default_rng(16)
    a = random_spd(rng)
    bs = random_tree(rng, batch=(3,))
    batched = jax.jit(jax.vmap(lambda b: solve(a, b, damping=0.5, rtol=1e-8)))(bs)
    assert batched.info.iterations.shape == (3,)
    for j in range(3):
        b_j = jax.tree.map(operator.itemgetter(j), bs)
        single = solve(a, b_j, damping=0.5, rtol=1e-8)
        x_j = jax.tree.map(operator.itemgetter(j), batched.x)
        # Each batch member stops on its own: same iterate as the unbatched solve.
        assert int(batched.info.iterations[j]) == int(single.info.iterations)
        np.testing.assert_allclose(flat(x_j), flat(single.x), rtol=1e-12)
        assert rel_err(x_j, dense_solution(a, b_j, 0.5)) < 1e-6  # κ·rtol = 1e-6


# ---------------------------------------------------------------------------------------------
# Messages, validation, docstrings
# ---------------------------------------------------------------------------------------------


def test_reason_messages():
    advice = {
        CGReason.CONVERGED: "converged",
        CGReason.PROGRESS: "progress_tolerance",
        CGReason.MAX_ITERATIONS: "raise max_iterations",
        CGReason.NEGATIVE_CURVATURE: "increase damping",
        CGReason.NON_FINITE: "nan",
    }
    for code, words in advice.items():
        assert words in reason_message(code).lower()
        assert reason_message(np.int32(code)) == reason_message(code)
    with pytest.raises(ValueError, match="unknown CG stop reason"):
        reason_message(7)


def test_invalid_arguments():
    b = {"w": jnp.ones(3)}
    mv = lambda v: v  # noqa: E731
    with pytest.raises(ValueError, match="structure of b"):
        conjugate_gradient(lambda v: v["w"], b)
    with pytest.raises(ValueError, match="shape"):
        conjugate_gradient(lambda v: {"w": jnp.ones(4)}, b)
    with pytest.raises(ValueError, match="min_iterations"):
        conjugate_gradient(mv, b, min_iterations=5, max_iterations=3)
    with pytest.raises(ValueError, match="max_iterations"):
        conjugate_gradient(mv, b, max_iterations=2.5)
    with pytest.raises(ValueError, match="damping"):
        conjugate_gradient(mv, b, damping=jnp.ones(2))
    with pytest.raises(TypeError, match="floating"):
        conjugate_gradient(mv, {"w": jnp.ones(3, jnp.int32)})
    with pytest.raises(ValueError, match="no array leaves"):
        conjugate_gradient(mv, {})


def test_docstring_examples():
    failures, attempted = doctest.testmod(cg_module)
    assert attempted > 0 and failures == 0
