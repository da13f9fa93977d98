"""natgrad.linalg calls LAPACK one matrix at a time (see its module docstring).

jaxlib ≥ 0.10's CPU LAPACK kernels split a large batch over XLA's intra-op thread pool and
block their worker until the pieces finish; as many concurrent batched kernels as pool threads
deadlock the program (every thread waiting on a futex). On a two-core machine the six
independent batched solves of ``CONCURRENT_SOLVES`` hang when written with
``lax.linalg.triangular_solve`` directly (a test cannot afford to show that); the subprocess
tests check that natgrad's versions finish, and the float64 tests that looping changes no
value or derivative.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from natgrad import linalg

jax.config.update("jax_enable_x64", True)

CONCURRENT_SOLVES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from natgrad import linalg
    keys = jax.random.split(jax.random.key(0), 3)
    spd = jax.random.normal(keys[0], (10, 200, 200))
    t = linalg.cholesky(spd @ jnp.swapaxes(spd, -1, -2) + 200 * jnp.eye(200))

    def body(c, _):
        c = tuple(linalg.solve_triangular(t, x, lower=True) * (i + 2.0) + jnp.sin(x)
                  for i, x in enumerate(c))
        return c, None

    @jax.jit
    def run(a, b):
        return jax.lax.scan(body, (a, b, a + 1, b + 1, a - 1, b - 1), None, length=20)[0]

    shape = (10, 200, 200)
    out = run(jax.random.normal(keys[1], shape), jax.random.normal(keys[2], shape))
    assert all(bool(jnp.all(jnp.isfinite(o))) for o in out)
    print("done")
    """
)

SCANNED_SVGP_STEPS = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from natgrad.gp import SVGP, hybrid, kernels, likelihoods
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.random((256, 20))), jnp.asarray(rng.integers(0, 10, 256))
    model = SVGP(kernels.SquaredExponential(lengthscale=3.0, ard=False), likelihoods.Softmax(10))
    params = model.init(jnp.asarray(rng.random((150, 20))))
    tx = hybrid(0.1, optax.adam(0.01), mode="joint")  # natural-coordinate steps on 10 q(u)

    def body(carry, _):
        p, s = carry
        g = jax.grad(lambda p: -model.elbo(p, x, y, num_data=256))(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=3)[0])
    p, _ = run(params, tx.init(params))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(p))
    print("done")
    """
)


@pytest.mark.parametrize("program", [CONCURRENT_SOLVES, SCANNED_SVGP_STEPS], ids=["solves", "svgp"])
def test_concurrent_batched_factorizations_finish(program):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]


def _spd(rng, shape):
    a = rng.standard_normal(shape)
    return a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])


@pytest.mark.parametrize("loop_above", [linalg.LOOP_ABOVE_FLOPS, 0.0])
@pytest.mark.parametrize("batch", [(), (1,), (4,), (3, 2)])
def test_values_and_derivatives_match_the_batched_lapack_calls(batch, loop_above, monkeypatch):
    monkeypatch.setattr(linalg, "LOOP_ABOVE_FLOPS", loop_above)  # 0: always loop
    rng = np.random.default_rng(len(batch))
    a = jnp.asarray(_spd(rng, batch + (5, 5)))
    b = jnp.asarray(rng.standard_normal(batch + (5, 3)))

    def ours(a, b):
        chol = linalg.cholesky(a)
        return linalg.solve_triangular(chol, b, lower=True, transpose_t=True), chol

    def reference(a, b):
        chol = jnp.linalg.cholesky(a)
        solved = lax.linalg.triangular_solve(chol, b, left_side=True, lower=True, transpose_a=True)
        return solved, chol

    for got, want in zip(ours(a, b), reference(a, b), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.sin(fn(a, b)[0])) + jnp.sum(fn(a, b)[1] ** 2)

    for got, want in zip(
        jax.grad(loss(ours), argnums=(0, 1))(a, b),
        jax.grad(loss(reference), argnums=(0, 1))(a, b),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # vmap over natgrad's helpers (the loop body is batched again) gives the same values.
    np.testing.assert_allclose(
        jax.vmap(linalg.cholesky)(a.reshape((-1, 5, 5))),
        jnp.linalg.cholesky(a).reshape((-1, 5, 5)),
        rtol=1e-12,
    )


def test_small_batches_keep_one_call_and_large_ones_loop():
    def primitives(fn, *args):
        return str(jax.make_jaxpr(fn)(*args))

    small = jnp.broadcast_to(jnp.eye(5), (4, 5, 5))
    large = jnp.broadcast_to(jnp.eye(100), (10, 100, 100))
    assert "scan" not in primitives(linalg.cholesky, small)
    assert "scan" in primitives(linalg.cholesky, large)
    assert "scan" not in primitives(lambda t: linalg.solve_triangular(t, t, lower=True), small)
    assert "scan" in primitives(lambda t: linalg.solve_triangular(t, t, lower=True), large)


def test_solve_broadcasts_a_shared_factor_over_the_right_hand_sides():
    rng = np.random.default_rng(7)
    chol = jnp.linalg.cholesky(jnp.asarray(_spd(rng, (4, 4))))
    b = jnp.asarray(rng.standard_normal((3, 4, 2)))
    np.testing.assert_allclose(
        linalg.solve_triangular(chol, b, lower=True),
        jnp.stack([jax.scipy.linalg.solve_triangular(chol, bi, lower=True) for bi in b]),
        rtol=1e-12,
    )
