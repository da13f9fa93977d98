"""Tests of the step-size schedules against their formulas computed in float64 numpy."""

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import natgrad  # noqa: E402

# Both schedules compute in the default float dtype (float64 here). log_linear_warmup: γ₀·exp(f·λ)
# with |λ| = |log(γ₁/γ₀)| ≈ 6.9 turns the half-ulp rounding of f·λ into a relative error ≲ 7ε,
# plus a few ε from exp and the product: 1e-14 ≈ 45ε bounds it. A float32 computation (errors
# ~1e-7) fails this by far.
RTOL = 1e-14


def warmup_reference(t, initial, final, steps):
    """γ₀ (γ₁/γ₀)^min(t/K, 1) in float64 numpy."""
    return initial * (final / initial) ** min(t / steps, 1.0)


def increasing_reference(t, rate, speed):
    """α(1 − e^(−ct)) in float64 numpy."""
    return rate * (1.0 - np.exp(-speed * t))


@pytest.mark.parametrize(
    ("initial", "final", "steps"), [(1e-4, 0.1, 10), (1e-4, 0.1, 5), (2.0, 0.5, 7)]
)
def test_log_linear_warmup_matches_formula(initial, final, steps):
    schedule = natgrad.log_linear_warmup(initial, final, steps)
    jitted = jax.jit(schedule)
    for t in (0, steps // 2, steps / 2, steps, 2 * steps, 10_000):
        expected = warmup_reference(t, initial, final, steps)
        for value in (schedule(t), jitted(t)):
            assert jnp.result_type(value) == jnp.float64  # not rounded to float32 under x64
            np.testing.assert_allclose(float(value), expected, rtol=RTOL, err_msg=f"t={t}")
    assert float(schedule(0)) == initial  # exactly: γ₀·exp(0)
    assert float(schedule(steps)) == final == float(schedule(3 * steps))  # exactly γ₁ from K on


def test_log_linear_warmup_is_geometric():
    """Equal ratios γ_{t+1}/γ_t = (γ₁/γ₀)^(1/K) during the warm-up, then 1."""
    schedule = jax.jit(natgrad.log_linear_warmup(1e-4, 0.1, 5))
    values = np.asarray(schedule(jnp.arange(9, dtype=jnp.int32)))
    ratios = values[1:] / values[:-1]
    np.testing.assert_allclose(ratios[:5], 1000.0 ** (1 / 5), rtol=RTOL)
    np.testing.assert_array_equal(ratios[5:], 1.0)


@pytest.mark.parametrize(("rate", "speed"), [(1.0, 0.1), (0.5, 2.0), (3.0, 1e-3)])
def test_increasing_rate_matches_formula(rate, speed):
    schedule = natgrad.increasing_rate(rate, speed)
    jitted = jax.jit(schedule)
    for t in (0, 1, 5, 50, 1_000):
        # The numpy reference has its own cancellation error ε/(1 − e^(−ct)) ≤ 2e-13 for
        # ct ≥ 1e-3 (the schedule uses expm1 and has none); RTOL plus that bound.
        tol = RTOL + (np.finfo(np.float64).eps / -np.expm1(-speed * t) if t else 0.0)
        expected = increasing_reference(t, rate, speed)
        for value in (schedule(t), jitted(t)):
            assert jnp.result_type(value) == jnp.float64
            np.testing.assert_allclose(float(value), expected, rtol=tol, err_msg=f"t={t}")
    assert float(schedule(0)) == 0.0


def test_increasing_rate_is_accurate_for_small_ct():
    """α(1 − e^(−ct)) ≈ αct for ct ≪ 1: computed without cancellation (−expm1)."""
    value = float(natgrad.increasing_rate(1.0, 1e-12)(1))
    # 1 − e^(−x) = x − x²/2 + …: relative error of the first term x²/2/x = 5e-13.
    np.testing.assert_allclose(value, 1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial=0.0),
        dict(initial=-1e-4),
        dict(final=0.0),
        dict(final=-0.1),
        dict(initial=math.nan),
        dict(final=math.inf),
        dict(steps=0),
        dict(steps=-3),
    ],
)
def test_log_linear_warmup_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="must be"):
        natgrad.log_linear_warmup(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rate=0.0),
        dict(rate=-1.0),
        dict(speed=0.0),
        dict(speed=-0.1),
        dict(rate=math.nan),
        dict(speed=math.inf),
    ],
)
def test_increasing_rate_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="positive and finite"):
        natgrad.increasing_rate(**kwargs)


def test_inverse_time_decay_matches_formula_and_composes():
    base = natgrad.log_linear_warmup(1e-4, 0.1, 5)
    sched = natgrad.inverse_time_decay(base, decay_steps=1000)
    for t in (0, 3, 5, 999, 1000, 12345):
        expected = float(base(t)) / (1 + t / 1000)
        np.testing.assert_allclose(float(sched(t)), expected, rtol=1e-14)
    np.testing.assert_allclose(float(sched(1000)), 0.05, rtol=1e-14)
    constant = natgrad.inverse_time_decay(0.2, decay_steps=10)
    np.testing.assert_allclose([float(constant(t)) for t in (0, 10, 30)], [0.2, 0.1, 0.05])
    # jit-able with a traced count, and it drives natural_vi like any schedule
    np.testing.assert_allclose(jax.jit(sched)(jnp.asarray(2000)), 0.1 / 3, rtol=1e-14)


@pytest.mark.parametrize(
    ("schedule", "decay_steps", "match"),
    [
        (0.1, 0.0, "decay_steps"),
        (0.1, math.inf, "decay_steps"),
        (0.0, 10.0, "constant schedule"),
        (math.nan, 10.0, "constant schedule"),
        ("0.1", 10.0, "constant schedule"),
    ],
)
def test_inverse_time_decay_rejects_invalid_arguments(schedule, decay_steps, match):
    with pytest.raises(ValueError, match=match):
        natgrad.inverse_time_decay(schedule, decay_steps)


def test_schedules_drive_natural_vi():
    """Inside natural_vi (in one jitted lax.scan) ``state.step_size`` is γ_t = schedule(t).

    q = N(m, S) in natural parameters, loss KL(q‖N(0, I)) + const = ½(tr S + mᵀm − log det S).
    With increasing_rate, γ₀ = 0 and the first update is exactly zero.
    """
    schedules = {
        "warmup": natgrad.log_linear_warmup(1e-3, 0.5, 6),
        "increasing": natgrad.increasing_rate(0.8, 0.3),
        "decayed": natgrad.inverse_time_decay(natgrad.log_linear_warmup(1e-3, 0.5, 6), 4),
    }
    txs = {k: natgrad.natural_vi(s, "natural") for k, s in schedules.items()}
    p = natgrad.resolve("natural")

    def loss(params):
        mean, cov = p.mean_covariance(params)
        chol = jnp.linalg.cholesky(cov)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return 0.5 * (jnp.trace(cov) + mean @ mean - logdet)

    # q₀ = N(1, 2I): θ₁ = S⁻¹m = ½·1, θ₂ = −½S⁻¹ = −¼I.
    params0 = (jnp.full(2, 0.5), -0.25 * jnp.eye(2))
    steps = 10

    def body(carry, _):
        out = {}
        for k, tx in txs.items():
            params, state = carry[k]
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            out[k] = (optax.apply_updates(params, updates), state)
        record = {k: (out[k][1].step_size, out[k][0]) for k in txs}
        return out, record

    carry0 = {k: (params0, tx.init(params0)) for k, tx in txs.items()}
    _, record = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(carry0)

    t = np.arange(steps)
    expected = {
        "warmup": [warmup_reference(i, 1e-3, 0.5, 6) for i in t],
        "increasing": increasing_reference(t, 0.8, 0.3),
        "decayed": [warmup_reference(i, 1e-3, 0.5, 6) / (1 + i / 4) for i in t],
    }
    for k in txs:
        step_size, _ = record[k]
        np.testing.assert_allclose(np.asarray(step_size), expected[k], rtol=1e-13, err_msg=k)
    _, (first_t1, first_t2) = record["increasing"]
    np.testing.assert_array_equal(first_t1[0], params0[0])  # γ₀ = 0: nothing moved
    np.testing.assert_array_equal(first_t2[0], params0[1])
    assert not np.array_equal(first_t2[1], params0[1])  # γ₁ > 0: the second step moves
