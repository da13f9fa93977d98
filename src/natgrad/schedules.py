"""Step-size schedules γ_t for natural-gradient VI, as optax schedules (``count -> γ``).

Natural-gradient steps with γ = 1 are exact for conjugate models but unstable in general;
Salimbeni et al. (2018, §4) warm γ up log-linearly from a tiny value.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def _float_dtype():
    """The default float dtype: float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.result_type(float)


def log_linear_warmup(initial: float = 1e-4, final: float = 0.1, steps: int = 5) -> optax.Schedule:
    """γ_t = γ₀ (γ₁/γ₀)^min(t/K, 1): geometric growth from γ₀ to γ₁ over K steps, then γ₁.

    Salimbeni, Eleftheriadis & Hensman (AISTATS 2018) used γ₀ = 1e-4 → γ₁ = 0.1.

    Args:
      initial: γ₀ > 0, the step size at t = 0.
      final: γ₁ > 0, the step size from t = K on.
      steps: K ≥ 1, the length of the warm-up.

    Returns:
      An optax schedule mapping the step count t to γ_t.

    Example:
      >>> sched = log_linear_warmup(1e-4, 0.1, steps=5)
      >>> [round(float(sched(t)), 6) for t in (0, 5, 10)]
      [0.0001, 0.1, 0.1]
    """
    if not (0 < initial < math.inf and 0 < final < math.inf):
        raise ValueError(
            f"`initial` and `final` must be positive and finite, got {initial} and {final}"
        )
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}")
    log_ratio = math.log(final) - math.log(initial)  # log(γ₁/γ₀), no overflow

    def schedule(count):
        # In the default float dtype, so that γ_t is float64 (not rounded to float32) under x64.
        fraction = jnp.minimum(jnp.asarray(count, dtype=_float_dtype()) / steps, 1.0)
        # γ₁ itself from t = K on (γ₀·exp(log(γ₁/γ₀)) is off by a few ulp).
        return jnp.where(fraction < 1.0, initial * jnp.exp(fraction * log_ratio), final)

    return schedule


def increasing_rate(rate: float = 1.0, speed: float = 0.1) -> optax.Schedule:
    """γ_t = α(1 − e^(−ct)), the "increasing rate" schedule rising from 0 towards α.

    Args:
      rate: α > 0, the limit of γ_t.
      speed: c > 0, how fast γ_t approaches α.

    Note γ_0 = 0: the first step does nothing. Start the count at 1 with
    ``optax.join_schedules`` or use :func:`log_linear_warmup` if that matters.
    """
    if not (0 < rate < math.inf and 0 < speed < math.inf):
        raise ValueError(f"`rate` and `speed` must be positive and finite, got {rate} and {speed}")

    def schedule(count):
        # −expm1(−ct) = 1 − e^(−ct) without cancellation for small ct; default float dtype.
        return rate * -jnp.expm1(-speed * jnp.asarray(count, dtype=_float_dtype()))

    return schedule


def inverse_time_decay(schedule: optax.Schedule | float, decay_steps: float) -> optax.Schedule:
    """γ_t = base(t) / (1 + t/τ): any schedule (or constant) decayed as 1/t after ~τ steps.

    Minibatch natural-gradient steps at a constant γ stop at a noise floor; the decayed rates
    satisfy Robbins–Monro's Σγ_t = ∞, Σγ_t² < ∞ (Hoffman et al. 2013, stochastic variational
    inference), so the iterates settle. Composed with :func:`log_linear_warmup`, γ rises over
    the warm-up and then decays.

    Args:
      schedule: the base schedule (``count -> γ``) or a constant γ > 0.
      decay_steps: τ > 0; γ has halved (relative to the base) at t = τ.

    Example:
      >>> sched = inverse_time_decay(log_linear_warmup(1e-4, 0.1, 5), decay_steps=1000)
      >>> [round(float(sched(t)), 6) for t in (0, 1000, 3000)]
      [0.0001, 0.05, 0.025]
    """
    if not (0 < decay_steps < math.inf):
        raise ValueError(f"`decay_steps` must be positive and finite, got {decay_steps}")
    if not callable(schedule):
        rate = schedule
        if not (isinstance(rate, int | float) and 0 < rate < math.inf):
            raise ValueError(f"a constant schedule must be positive and finite, got {rate!r}")
        schedule = optax.constant_schedule(float(rate))

    def decayed(count):
        t = jnp.asarray(count, dtype=_float_dtype())
        return schedule(count) / (1.0 + t / decay_steps)

    return decayed
