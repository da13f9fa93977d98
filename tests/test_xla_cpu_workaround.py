"""The XLA:CPU scheduler workaround of the command line (see :mod:`natgrad.cli`).

jaxlib 0.10's CPU backend deadlocks (every thread waiting on a futex) on a scanned
natural-coordinate SVGP step with 10 latents and M = 100 under its concurrency-optimized
scheduler; ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` runs it. The subprocess
test checks the workaround on that reproducer (without the flag it hangs, which a test cannot
afford to show).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from natgrad import cli

REPRODUCER = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from natgrad.gp import SVGP, hybrid, kernels, likelihoods
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.random((256, 20))), jnp.asarray(rng.integers(0, 10, 256))
    model = SVGP(kernels.SquaredExponential(lengthscale=3.0, ard=False), likelihoods.RobustMax(10))
    params = model.init(jnp.asarray(rng.random((100, 20))))
    tx = hybrid(0.1, optax.adam(0.01), mode="joint")  # natural-coordinate steps on q(u)

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


def test_flag_is_added_once_and_a_user_choice_is_kept():
    env = {}
    assert cli.avoid_xla_cpu_scheduler_deadlock(env)
    assert env["XLA_FLAGS"] == cli.XLA_CPU_SCHEDULER_FLAG
    assert not cli.avoid_xla_cpu_scheduler_deadlock(env)  # already there
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert cli.avoid_xla_cpu_scheduler_deadlock(env)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        cli.XLA_CPU_SCHEDULER_FLAG,
    ]
    env = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert not cli.avoid_xla_cpu_scheduler_deadlock(env)  # the user's explicit choice stands


def test_scanned_natural_svgp_steps_finish_with_the_flag():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cli.avoid_xla_cpu_scheduler_deadlock(env)
    result = subprocess.run(
        [sys.executable, "-c", REPRODUCER],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
