"""Bayesian logistic regression on breast cancer: natural-gradient VI against Adam on one ELBO.

Model, with xₙ ∈ ℝᴰ standardized features plus a bias (D = 31) and sₙ = 2yₙ − 1 ∈ {±1}:

    p(w) = N(0, α⁻¹I),   p(yₙ | w) = σ(sₙ xₙᵀw),   q(w) = N(m, LLᵀ)  (``mean_cholesky``).

Evidence lower bound, maximized over (m, L):

    ELBO(q) = Σₙ E_q[log σ(sₙ aₙ)] − KL(q ‖ p),   aₙ = xₙᵀw ~ N(μₙ, vₙ), μₙ = xₙᵀm, vₙ = ‖Lᵀxₙ‖².

Each one-dimensional expectation uses P-point Gauss–Hermite quadrature for the standard normal,
E[f(a)] ≈ Σᵢ ωᵢ f(μ + √v zᵢ) with (zᵢ, ωᵢ) from ``numpy.polynomial.hermite_e.hermegauss``
(weights divided by √(2π)); it is deterministic, so ELBO differences of 0.1 nat are resolved
exactly rather than buried in Monte Carlo noise. KL(q‖p) is
:meth:`natgrad.gaussian.mean_cholesky.kl`, which uses log|Lᵢᵢ| and so stays defined if Adam
makes a diagonal entry of L negative (S = LLᵀ is unchanged by the sign).

Methods, both started at the prior (m = 0, L = α^(-1/2) I), both on the full-batch −ELBO:

* ``natural_gradient``: :func:`natgrad.natural_vi` on (m, L) with the log-linear warm-up
  γ_t = 10⁻⁴ (γ₁/10⁻⁴)^min(t/K, 1) (:func:`natgrad.log_linear_warmup`).
* ``adam``: :func:`optax.adam` on (m, L), the gradient of L projected on the lower triangle
  (:meth:`~natgrad.expfam.gaussian.GaussianParameterization.project_gradient`), so L stays
  lower triangular.

Test predictions use p(y = 1 | x) = E_q[σ(xᵀw)] by the same quadrature, thresholded at ½.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from natgrad import demo
from natgrad.quadrature import gauss_hermite

NAME = "logistic"

#: α, the prior precision: p(w) = N(0, α⁻¹I). Fixed so that every method maximizes one ELBO.
PRIOR_PRECISION = 1.0
#: τ in nats: a method "has converged" at the first iteration with ELBO ≥ best ELBO − τ.
TOLERANCE = 0.1
#: γ₀, the first step size of the natural-gradient warm-up.
GAMMA_INITIAL = 1e-4

# How the defaults were chosen (split seeds 0–3, iterations to within 0.1 nat of the best ELBO):
# * natural gradient, γ₁ ∈ {0.3, 0.5, 0.7, 1.0}, K ∈ {1, ..., 10}: every γ₁ reaches the band in
#   8–11 iterations with K = 5, but the warm-up is what keeps it stable: K ≤ 3 diverges for
#   γ₁ ≥ 0.5 (the safeguard skips most steps), and K = 4 diverges for γ₁ = 0.7 on two seeds.
#   γ₁ = 1 also oscillates by ~10⁻⁴ nat near the optimum. γ₁ = 0.5, K = 5 reaches the band in
#   9–11 iterations, increases the ELBO monotonically to machine precision, never shrinks a
#   step, and still converges with K = 4.
# * Adam, lr ∈ {0.01, 0.03, 0.05, 0.1, 0.2, 0.3}: 0.1 is the largest rate that stays in the band
#   once there and converges (152–184 iterations); 0.2 first touches the band sooner (114–131)
#   but leaves it again by up to 0.6 nat, 0.3 does not converge, 0.05 takes ~300 and 0.01 ~1300.
# * 32 quadrature points: at the optimum the ELBO agrees with a 128-point rule to 5e-5 nat.
DEFAULTS = {
    "iterations_ng": 200,
    "iterations_adam": 2000,
    "gamma": 0.5,
    "warmup_steps": 5,
    "adam_lr": 0.1,
    "quadrature_points": 32,
    "chunk_size": 10,
}
QUICK = {"iterations_ng": 20, "iterations_adam": 100}

DESCRIPTION = f"""\
Bayesian logistic regression on the Wisconsin breast-cancer data (embedded in scikit-learn:
569 tumours, 30 features, standardized with training statistics, plus a bias: D = 31; an 80/20
train/test split). Prior w ~ N(0, α⁻¹I) with α = {PRIOR_PRECISION:g}; q(w) = N(m, LLᵀ) with a full
covariance, parameterized by its mean and Cholesky factor.

Both methods maximize the same evidence lower bound

    ELBO = Σₙ E_q[log σ(sₙ xₙᵀw)] − KL(q ‖ p),   sₙ = ±1,

with each expectation by Gauss–Hermite quadrature (deterministic), from the same start (q = p):

  natural_gradient  natgrad.natural_vi on (m, L), step size warmed up log-linearly from
                    {GAMMA_INITIAL:g} to γ₁ over K steps (--gamma, --warmup-steps).
  adam              optax.adam on (m, L) with the gradient of L kept lower triangular (--adam-lr).

Steps run in float64 (x64 is switched on for the run only; --dtype float32 to compare),
jit-compiled in chunks of jax.lax.scan and timed after compilation (--chunk-size steps per
call); the ELBO is recorded after every iteration.

Output: a table with, per method, the iterations and seconds to come within {TOLERANCE:g} nat of the
best ELBO either method reached, the final ELBO, the test accuracy (p(y=1|x) = E_q[σ(xᵀw)] > ½)
and seconds per iteration; and in the output folder (--out):

  demo-logistic.json  configuration, library versions, machine, one result row per method and
                      the ELBO after every iteration;
  demo-logistic.png   ELBO against iteration, and the gap to the best ELBO against iteration
                      and against seconds (log scale).

Example:  natgrad demo --out ./natgrad-out      (10–20 s on two CPU cores, mostly compilation)
          natgrad demo --quick                  (a few seconds; small iteration budgets)
"""


# --------------------------------------------------------------------------------------------
# Model.
# --------------------------------------------------------------------------------------------


def expected_log_sigmoid(mean, std, nodes, weights):
    """E[log σ(a)] for a ~ N(μ, σ²) by quadrature: Σᵢ ωᵢ log σ(μ + σ zᵢ), elementwise in μ, σ."""
    import jax

    a = mean[..., None] + std[..., None] * nodes  # (..., P)
    return jax.nn.log_sigmoid(a) @ weights


def marginals(params, x):
    """μₙ = xₙᵀm and σₙ = ‖Lᵀxₙ‖ of aₙ = xₙᵀw under q = N(m, LLᵀ): ``(N, D) -> (N,), (N,)``."""
    import jax.numpy as jnp

    mean, scale_tril = params
    xl = x @ scale_tril  # row n is (Lᵀxₙ)ᵀ
    return x @ mean, jnp.sqrt(jnp.sum(xl * xl, axis=-1))


def expected_log_likelihood(params, x, signs, nodes, weights):
    """Σₙ E_q[log σ(sₙ xₙᵀw)], with sₙaₙ ~ N(sₙμₙ, σₙ²) by Gauss–Hermite quadrature."""
    import jax.numpy as jnp

    mu, std = marginals(params, x)
    return jnp.sum(expected_log_sigmoid(signs * mu, std, nodes, weights))


def prior(dim: int, dtype, prior_precision: float = PRIOR_PRECISION):
    """p(w) = N(0, α⁻¹I) as ``mean_cholesky`` parameters (0, α^(-1/2) I)."""
    import jax.numpy as jnp

    return jnp.zeros(dim, dtype), jnp.eye(dim, dtype=dtype) / np.sqrt(prior_precision)


def elbo(params, x, signs, nodes, weights, prior_precision: float = PRIOR_PRECISION):
    """ELBO(q) = Σₙ E_q[log σ(sₙ xₙᵀw)] − KL(q ‖ N(0, α⁻¹I)) for q = N(m, LLᵀ), ``params = (m, L)``.

    Args:
      params: ``(m, L)`` with shapes ``(D,)`` and ``(D, D)``, L lower triangular.
      x: ``(N, D)`` features.
      signs: ``(N,)`` labels sₙ ∈ {±1}.
      nodes, weights: ``(P,)`` standard-normal quadrature rule from :func:`gauss_hermite`.
      prior_precision: α.

    Returns:
      The scalar ELBO in nats.
    """
    from natgrad.expfam import gaussian

    p = prior(x.shape[-1], x.dtype, prior_precision)
    kl = gaussian.mean_cholesky.kl(params, p)
    return expected_log_likelihood(params, x, signs, nodes, weights) - kl


def predictive_probability(params, x, nodes, weights):
    """p(y = 1 | x) = E_q[σ(xᵀw)] = Σᵢ ωᵢ σ(μ + σ zᵢ) per row of ``x``: ``(N, D) -> (N,)``."""
    import jax

    mu, std = marginals(params, x)
    return jax.nn.sigmoid(mu[:, None] + std[:, None] * nodes) @ weights


# --------------------------------------------------------------------------------------------
# Optimizers.
# --------------------------------------------------------------------------------------------


def natural_gradient_optimizer(gamma: float, warmup_steps: int):
    """``natural_vi`` on ``mean_cholesky`` with γ_t warmed up from 10⁻⁴ to γ₁ = ``gamma``."""
    import natgrad

    schedule = natgrad.log_linear_warmup(GAMMA_INITIAL, gamma, warmup_steps)
    return natgrad.natural_vi(schedule, "mean_cholesky")


def adam_optimizer(learning_rate: float):
    """``optax.adam(learning_rate)`` (the demo projects L's gradient on the lower triangle)."""
    import optax

    return optax.adam(learning_rate)


def make_step(objective, optimizer):
    """One step on −f: ``(params, opt_state) -> ((params', opt_state'), f(params))``, f = objective.

    The gradient of L is projected on the lower triangle (its upper entries are not parameters).
    """
    import jax
    import optax

    from natgrad.expfam import gaussian

    def step(state):
        params, opt_state = state
        value, grads = jax.value_and_grad(lambda p: -objective(p))(params)
        grads = gaussian.mean_cholesky.project_gradient(params, grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), -value

    return step


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``natgrad demo``."""
    d = DEFAULTS
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("natgrad-out"),
        help="output folder for the demo's JSON and PNG files (default: ./natgrad-out)",
    )
    parser.add_argument(
        "--iterations-ng",
        type=int,
        default=None,
        help=f"natural-gradient iterations (default {d['iterations_ng']}; "
        f"{QUICK['iterations_ng']} with --quick)",
    )
    parser.add_argument(
        "--iterations-adam",
        type=int,
        default=None,
        help=f"Adam iterations (default {d['iterations_adam']}; "
        f"{QUICK['iterations_adam']} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small iteration budgets (for tests and a first look); explicit budgets win",
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=d["gamma"],
        help=f"γ₁, the natural-gradient step size after warm-up (default {d['gamma']:g})",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=d["warmup_steps"],
        help=f"K, steps of the log-linear warm-up from {GAMMA_INITIAL:g} to γ₁ "
        f"(default {d['warmup_steps']})",
    )
    parser.add_argument(
        "--adam-lr",
        type=float,
        default=d["adam_lr"],
        help=f"Adam learning rate (default {d['adam_lr']:g})",
    )
    parser.add_argument(
        "--quadrature-points",
        type=int,
        default=d["quadrature_points"],
        help=f"Gauss–Hermite points per expectation (default {d['quadrature_points']})",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=d["chunk_size"],
        help=f"steps per compiled jax.lax.scan call (default {d['chunk_size']})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (0)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of rows held out (0.2)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="floating dtype of data and parameters (default float64; x64 is enabled for the run)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show progress bars on stderr"
    )


def _config(args: argparse.Namespace) -> dict:
    quick = bool(getattr(args, "quick", False))

    def budget(key):
        value = getattr(args, key, None)
        return value if value is not None else (QUICK if quick else DEFAULTS)[key]

    config = {
        "data": "breast_cancer",
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "dtype": args.dtype,
        "prior_precision": PRIOR_PRECISION,
        "quadrature_points": args.quadrature_points,
        "tolerance_nats": TOLERANCE,
        "quick": quick,
        "chunk_size": args.chunk_size,
        "natural_gradient": {
            "iterations": budget("iterations_ng"),
            "gamma_initial": GAMMA_INITIAL,
            "gamma": args.gamma,
            "warmup_steps": args.warmup_steps,
            "parameterization": "mean_cholesky",
        },
        "adam": {"iterations": budget("iterations_adam"), "learning_rate": args.adam_lr},
    }
    for key in ("iterations_ng", "iterations_adam"):
        if budget(key) < 1:
            raise SystemExit(f"natgrad demo: --{key.replace('_', '-')} must be ≥ 1")
    return config


def run_experiment(config: dict, *, show_progress: bool = True) -> dict:
    """Run both methods under ``config`` (as built from the options) and return the results.

    Must be called with the dtype's precision enabled (:func:`natgrad.demo.x64` for float64).

    Returns:
      ``{"best_elbo", "rows", "traces", "data"}``: the best ELBO over both methods, one row per
      method (:func:`natgrad.demo.summarize` plus ``test_accuracy`` and, for natural gradients,
      the safeguard's counters), the :class:`~natgrad.demo.Trace` of each method and the
      :class:`~natgrad.data.ClassificationData` used.
    """
    import jax.numpy as jnp

    from natgrad.data import load_breast_cancer

    dtype = np.dtype(config["dtype"])
    data = load_breast_cancer(
        seed=config["seed"], test_fraction=config["test_fraction"], dtype=dtype
    )
    x = jnp.asarray(data.x_train)
    signs = jnp.asarray(2.0 * data.y_train - 1.0, dtype)
    nodes, weights = (jnp.asarray(a) for a in gauss_hermite(config["quadrature_points"], dtype))
    alpha = config["prior_precision"]

    def objective(params):
        return elbo(params, x, signs, nodes, weights, alpha)

    init_params = prior(data.num_features, dtype, alpha)
    ng, adam = config["natural_gradient"], config["adam"]
    methods = [
        ("natural_gradient", natural_gradient_optimizer(ng["gamma"], ng["warmup_steps"]), ng),
        ("adam", adam_optimizer(adam["learning_rate"]), adam),
    ]
    traces = []
    with demo.progress(show_progress) as bar:
        tasks = [bar.add_task(name, total=m["iterations"]) for name, _, m in methods]
        for (name, optimizer, method), task in zip(methods, tasks, strict=True):
            trace = demo.run_chunked(
                make_step(objective, optimizer),
                lambda state: objective(state[0]),
                (init_params, optimizer.init(init_params)),
                method["iterations"],
                name=name,
                chunk_size=config["chunk_size"],
                on_chunk=lambda n, task=task: bar.advance(task, n),
            )
            traces.append(trace)

    best, rows = demo.summarize(traces, tolerance=config["tolerance_nats"])
    x_test = jnp.asarray(data.x_test)
    for row, trace in zip(rows, traces, strict=True):
        params = trace.final_state[0]
        prob = np.asarray(predictive_probability(params, x_test, nodes, weights))
        row["test_accuracy"] = float(np.mean((prob > 0.5) == (data.y_test == 1)))
        opt_state = trace.final_state[1]
        if hasattr(opt_state, "num_skipped"):  # natural_vi's safeguard counters
            row["safeguard_shrinks"] = int(opt_state.num_shrinks)
            row["safeguard_skipped"] = int(opt_state.num_skipped)
    return {"best_elbo": best, "rows": rows, "traces": traces, "data": data}


COLUMNS = (
    ("method", "method", ""),
    ("iterations_to_target", f"iterations to best − {TOLERANCE:g}", "d"),
    ("seconds_to_target", f"seconds to best − {TOLERANCE:g}", ".3f"),
    ("final", "final ELBO", ".3f"),
    ("test_accuracy", "test accuracy", ".3f"),
    ("seconds_per_iteration", "ms / iteration", ".3f"),
    ("iterations", "iterations run", "d"),
)


def run(args: argparse.Namespace) -> int:
    """``natgrad demo``: run, print the table, write ``demo-logistic.json`` and ``.png``."""
    config = _config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with demo.x64(config["dtype"] == "float64"):
        result = run_experiment(config, show_progress=not args.no_progress)
        info = demo.environment_info()
    best, rows, traces = result["best_elbo"], result["rows"], result["traces"]

    shown = [dict(r, seconds_per_iteration=1e3 * r["seconds_per_iteration"]) for r in rows]
    data = result["data"]
    demo.print_table(
        f"Bayesian logistic regression, breast cancer (N = {len(data.y_train)} train, "
        f"{len(data.y_test)} test, D = {data.num_features}): best ELBO {best:.3f}",
        COLUMNS,
        shown,
    )
    payload = {
        "demo": NAME,
        "config": config,
        "versions": info["versions"],
        "machine": info["machine"],
        "best_elbo": best,
        "results": rows,
        "traces": {t.name: {"elbo": t.values, "seconds": t.seconds} for t in traces},
    }
    json_path = demo.write_json(out / f"demo-{NAME}.json", payload)
    png_path = demo.plot_traces(
        out / f"demo-{NAME}.png",
        traces,
        best=best,
        tolerance=TOLERANCE,
        title="Bayesian logistic regression on breast cancer: natural-gradient VI vs Adam",
    )
    print(f"wrote {json_path}")
    if png_path is None:
        print("matplotlib is not installed: no plot (pip install natgrad[demo])", file=sys.stderr)
    else:
        print(f"wrote {png_path}")
    print(f"total time {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
