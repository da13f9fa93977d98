"""Benchmark: the cost of a natural gradient against the plain gradient of the same loss.

For every Gaussian parameterization ξ and dimension D this times two jitted functions of ξ:

* ``grad``:    ∇_ξL = ``jax.grad(loss)(ξ)``;
* ``natgrad``: the full natural-gradient step, ``natural_gradient(params=ξ,
  grads=jax.grad(loss)(ξ), parameterization=name)`` (gradient plus F_ξ⁻¹ by one VJP and one JVP),

and reports ``ratio = seconds_natgrad / seconds_grad`` (the goal is ≤ 2) together with the
number of Cholesky factorizations and triangular solves in each computation.

The loss is the negative ELBO of Bayesian linear regression y = Xw + ε, ε ~ N(0, I), with prior
w ~ N(0, I) and variational q(w) = N(m, S) of dimension D:

    L(q) = ½ tr(AS) + ½ (m − b)ᵀA(m − b) − ½ log det S  (+ const),

with A = XᵀX + I (data plus prior precision, SPD) and b = A⁻¹Xᵀy the exact posterior mean,
both precomputed once together with C = chol(A). Its minimizer is q = N(b, A⁻¹), and the natural
gradient in natural parameters is (θ₁ − Ab, θ₂ + ½A). Each parameterization evaluates the same L
in its cheapest honest way (what a user would write):

=========================  ================================  ==========================
parameterization           tr(AS)                            log det S
=========================  ================================  ==========================
natural (θ₁, θ₂)           ‖R⁻¹C‖²_F, R = chol(−2θ₂)         −2 Σ log Rᵢᵢ; m = R⁻ᵀR⁻¹θ₁
expectation (η₁, η₂)       Σ A ⊙ S, S = η₂ − η₁η₁ᵀ, m = η₁     2 Σ log chol(S)ᵢᵢ
mean_covariance (m, S)     Σ A ⊙ S                            2 Σ log chol(S)ᵢᵢ
mean_cholesky (m, L)       ‖CᵀL‖²_F                           2 Σ log Lᵢᵢ
mean_precision_cholesky    ‖L⁻¹C‖²_F                          −2 Σ log Lᵢᵢ
=========================  ================================  ==========================

so the gradient costs one Cholesky (natural, expectation, mean_covariance), one triangular
solve (mean_precision_cholesky) or one matrix product (mean_cholesky) of size D, plus its
backward pass. Times are medians over repeats after a jit warm-up, with the two functions
alternated within each repeat; counts come from the jaxpr of each jitted function (recursively
through sub-jaxprs) and, after XLA's simplifications, from its compiled HLO.

Run it as ``natgrad bench natural-gradient --out DIR``; it writes ``DIR/natural-gradient.json``
and ``DIR/natural-gradient.png``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from natgrad import linalg
from natgrad.bench import common
from natgrad.expfam import gaussian
from natgrad.expfam.base import resolve
from natgrad.natural_gradient import natural_gradient

BENCHMARK = "natural-gradient"

DESCRIPTION = """\
Cost of a natural gradient against the plain gradient, per Gaussian parameterization and D.

For the negative ELBO of Bayesian linear regression in dimension D,
  L(q) = ½ tr(AS) + ½ (m − b)ᵀA(m − b) − ½ log det S,
evaluated in each parameterization (natural, expectation, mean_covariance, mean_cholesky,
mean_precision_cholesky), times the jitted gradient jax.grad(L)(ξ) and the jitted full
natural-gradient step natural_gradient(params=ξ, grads=jax.grad(L)(ξ), ...), alternating the two
in each repeat after a warm-up, and reports median seconds, their ratio (goal: ≤ 2) and the
Cholesky factorizations and triangular solves in each computation.

Writes OUT/natural-gradient.json and, with matplotlib, OUT/natural-gradient.png.
"""

PARAMETERIZATIONS = (
    "natural",
    "expectation",
    "mean_covariance",
    "mean_cholesky",
    "mean_precision_cholesky",
)
FULL_DIMS = (10, 50, 200, 500, 1000, 2000)
QUICK_DIMS = (10, 50, 200)
FULL_REPEATS = 7
QUICK_REPEATS = 3
FULL_MIN_TIME = 0.05
QUICK_MIN_TIME = 0.005
RATIO_GOAL = 2.0


# --------------------------------------------------------------------------------------------
# The problem and the loss in each parameterization.
# --------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """Precomputed data of the loss (a pytree, passed to the jitted functions as an argument).

    Attributes:
      precision: A = XᵀX + I, ``(D, D)``.
      precision_chol: C = chol(A), lower triangular, ``(D, D)``.
      target: b = A⁻¹Xᵀy, the exact posterior mean, ``(D,)``.
    """

    precision: jax.Array
    precision_chol: jax.Array
    target: jax.Array


def make_problem(
    dim: int, *, key: jax.Array, dtype: Any = "float64"
) -> tuple[Problem, tuple[jax.Array, jax.Array]]:
    """A linear-regression posterior of dimension D and a starting q = N(m₀, S₀).

    X is ``(2D, D)`` with entries N(0, 1/D) (so A = XᵀX + I has condition number below about
    12), y = Xw + ε; S₀ = ½(I + VVᵀ/D) with V standard normal.

    Args:
      dim: D.
      key: a PRNG key.
      dtype: float32 or float64.

    Returns:
      ``(problem, (m0, S0))`` with m0 ``(D,)`` and S0 ``(D, D)``.
    """
    return _make_problem(int(dim), key, jnp.dtype(dtype).name)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _make_problem(dim: int, key: jax.Array, dtype: str):
    k_x, k_w, k_noise, k_m, k_v = jax.random.split(key, 5)
    x = jax.random.normal(k_x, (2 * dim, dim), dtype) / math.sqrt(dim)
    y = linalg.mv(x, jax.random.normal(k_w, (dim,), dtype)) + jax.random.normal(
        k_noise, (2 * dim,), dtype
    )
    precision = linalg.symmetrize(x.T @ x) + jnp.eye(dim, dtype=dtype)  # A = XᵀX + I
    chol = linalg.cholesky(precision)
    target = linalg.cho_solve_vec(chol, x.T @ y)  # b = A⁻¹Xᵀy
    mean0 = jax.random.normal(k_m, (dim,), dtype)
    v = jax.random.normal(k_v, (dim, dim), dtype)
    cov0 = 0.5 * (jnp.eye(dim, dtype=dtype) + linalg.symmetrize(v @ v.T) / dim)
    return Problem(precision, chol, target), (mean0, cov0)


@functools.partial(jax.jit, static_argnames="name")
def initial_params(name: str, mean: jax.Array, cov: jax.Array):
    """q = N(m, S) in the parameterization ``name``, via natgrad's conversions."""
    return resolve(name).from_natural(gaussian.natural_from_mean_covariance(mean, cov))


def _neg_elbo(trace: jax.Array, mean: jax.Array, logdet_cov: jax.Array, pb: Problem):
    """½ tr(AS) + ½ (m − b)ᵀA(m − b) − ½ log det S from its three ingredients."""
    diff = mean - pb.target
    return 0.5 * trace + 0.5 * jnp.dot(diff, linalg.mv(pb.precision, diff)) - 0.5 * logdet_cov


def _loss_natural(params, pb: Problem):
    theta1, theta2 = params
    prec_chol = linalg.cholesky(-2.0 * theta2)  # RRᵀ = S⁻¹ = −2θ₂
    mean = linalg.cho_solve_vec(prec_chol, theta1)  # m = Sθ₁
    white = linalg.solve_triangular(prec_chol, pb.precision_chol, lower=True)  # R⁻¹C
    trace = jnp.sum(white**2)  # tr(AS) = tr(CᵀR⁻ᵀR⁻¹C) = ‖R⁻¹C‖²_F
    return _neg_elbo(trace, mean, -2.0 * linalg.log_abs_det_triangular(prec_chol), pb)


def _loss_from_mean_covariance(mean, cov, pb: Problem):
    trace = jnp.sum(pb.precision * cov)  # tr(AS) = Σ A ⊙ S (A symmetric)
    logdet = 2.0 * linalg.log_abs_det_triangular(linalg.cholesky(cov))
    return _neg_elbo(trace, mean, logdet, pb)


def _loss_expectation(params, pb: Problem):
    mean, cov = gaussian.mean_covariance_from_expectation(*params)  # m = η₁, S = η₂ − η₁η₁ᵀ
    return _loss_from_mean_covariance(mean, cov, pb)


def _loss_mean_covariance(params, pb: Problem):
    mean, cov = params
    return _loss_from_mean_covariance(mean, cov, pb)


def _loss_mean_cholesky(params, pb: Problem):
    mean, scale_tril = params
    trace = jnp.sum((linalg.transpose(pb.precision_chol) @ scale_tril) ** 2)  # ‖CᵀL‖²_F
    return _neg_elbo(trace, mean, 2.0 * linalg.log_abs_det_triangular(scale_tril), pb)


def _loss_mean_precision_cholesky(params, pb: Problem):
    mean, prec_tril = params
    white = linalg.solve_triangular(prec_tril, pb.precision_chol, lower=True)  # L⁻¹C
    trace = jnp.sum(white**2)  # tr(AS) = tr(CᵀL⁻ᵀL⁻¹C) = ‖L⁻¹C‖²_F
    return _neg_elbo(trace, mean, -2.0 * linalg.log_abs_det_triangular(prec_tril), pb)


LOSSES: dict[str, Callable[[Any, Problem], jax.Array]] = {
    "natural": _loss_natural,
    "expectation": _loss_expectation,
    "mean_covariance": _loss_mean_covariance,
    "mean_cholesky": _loss_mean_cholesky,
    "mean_precision_cholesky": _loss_mean_precision_cholesky,
}
"""name → loss(params, problem): the same L(q) evaluated in each parameterization."""


@functools.cache
def grad_function(name: str) -> Callable:
    """Jitted ``(params, problem) -> ∇_ξL`` (one per name, so its compilations are reused)."""
    return jax.jit(jax.grad(LOSSES[name]))


def natgrad_function(
    name: str, *, mode: str = "forward", derivatives: str | None = None
) -> Callable:
    """Jitted ``(params, problem) -> F_ξ⁻¹∇_ξL``: the gradient and the natural gradient.

    ``derivatives`` is passed to :func:`natgrad.natural_gradient` only when given (None keeps
    the library's default).
    """
    return _natgrad_function(name, mode, derivatives)


@functools.cache
def _natgrad_function(name: str, mode: str, derivatives: str | None) -> Callable:
    loss = LOSSES[name]
    options = {"mode": mode} if derivatives is None else {"mode": mode, "derivatives": derivatives}

    def step(params, pb):
        return natural_gradient(
            params=params, grads=jax.grad(loss)(params, pb), parameterization=name, **options
        )

    return jax.jit(step)


# --------------------------------------------------------------------------------------------
# Counting factorizations.
# --------------------------------------------------------------------------------------------


def _classifier(dim: int) -> Callable[[Any], dict[str, float]]:
    """Labels of one jaxpr equation: Cholesky, triangular solve (matrix rhs), D³ matmul, and an
    estimate of its floating-point operations (linear algebra only, elementwise work ignored)."""

    def classify(eqn) -> dict[str, float]:
        name = eqn.primitive.name
        if name == "cholesky":
            shape = eqn.invars[0].aval.shape
            return {"cholesky": 1, "flops": math.prod(shape[:-2]) * shape[-1] ** 3 / 3}
        if name == "triangular_solve":
            n = eqn.invars[0].aval.shape[-1]
            rhs = eqn.invars[1].aval.shape
            matrix = len(rhs) >= 2 and min(rhs[-2:]) > 1
            return {
                "triangular_solve": 1,
                "triangular_solve_matrix": int(matrix),
                "flops": n * math.prod(rhs),  # n² per right-hand-side column
            }
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            madds = math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
            return {"matmul_cubic": int(madds >= dim**3), "flops": 2 * madds}
        return {}

    return classify


_OP_KEYS = ("cholesky", "triangular_solve", "triangular_solve_matrix", "matmul_cubic", "flops")


def count_ops(fn: Callable, *args, dim: int) -> dict[str, int]:
    """Operations in ``jax.make_jaxpr(fn)(*args)`` (recursively through sub-jaxprs).

    Returns counts of Cholesky factorizations, triangular solves (all, and those with a D×K
    right-hand side, K > 1), matrix products of ≥ D³ multiply-adds, and ``flops``: an estimate
    of the floating-point operations of these and all other matrix products (D³/3 per
    Cholesky, D²K per solve, 2MNK per product).
    """
    counts = common.count_primitives(jax.make_jaxpr(fn)(*args), _classifier(dim))
    return {key: round(counts.get(key, 0)) for key in _OP_KEYS}


def count_compiled_ops(jitted: Callable, *args) -> dict[str, int] | None:
    """Cholesky factorizations and triangular solves left in the compiled HLO (None if unknown)."""
    try:
        text = jitted.lower(*args).compile().as_text()
    except Exception:  # some backends give no text; the counts are then unknown
        return None
    return common.count_compiled(text)


# --------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------


def _all_finite(tree) -> bool:
    return all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree.leaves(tree))


def measure(
    name: str,
    params: Any,
    pb: Problem,
    *,
    repeats: int,
    min_time: float,
    mode: str = "forward",
    derivatives: str | None = None,
) -> dict[str, Any]:
    """One result row: times, ratio and operation counts for one parameterization and D.

    Args:
      name: the parameterization.
      params: q in that parameterization (:func:`initial_params`).
      pb: the problem (:func:`make_problem`).
      repeats, min_time: see :func:`natgrad.bench.common.time_alternating`.
      mode, derivatives: ``natural_gradient``'s options (``derivatives=None``: its default).
    """
    dim = pb.target.shape[-1]
    grad_fn = grad_function(name)
    natgrad_fn = natgrad_function(name, mode=mode, derivatives=derivatives)

    compile_grad = common.warm_up(lambda: grad_fn(params, pb))
    compile_natgrad = common.warm_up(lambda: natgrad_fn(params, pb))
    finite = _all_finite(grad_fn(params, pb)) and _all_finite(natgrad_fn(params, pb))
    timings = common.time_alternating(
        {"grad": lambda: grad_fn(params, pb), "natgrad": lambda: natgrad_fn(params, pb)},
        repeats=repeats,
        min_time=min_time,
        warmup=0,
    )
    ops_grad = count_ops(grad_fn, params, pb, dim=dim)
    ops_natgrad = count_ops(natgrad_fn, params, pb, dim=dim)
    grad, nat = timings["grad"], timings["natgrad"]
    return {
        "parameterization": name,
        "dim": dim,
        "seconds_grad": grad.median,
        "seconds_natgrad": nat.median,
        "ratio": nat.median / grad.median,
        "seconds_grad_min": grad.min,
        "seconds_natgrad_min": nat.min,
        "ratio_min": nat.min / grad.min,
        "flop_ratio": ops_natgrad["flops"] / ops_grad["flops"] if ops_grad["flops"] else None,
        "repeats": grad.repeats,
        "calls_per_repeat_grad": grad.number,
        "calls_per_repeat_natgrad": nat.number,
        "cholesky_grad": ops_grad["cholesky"],
        "cholesky_natgrad": ops_natgrad["cholesky"],
        "triangular_solves_grad": ops_grad["triangular_solve"],
        "triangular_solves_natgrad": ops_natgrad["triangular_solve"],
        "ops_grad": ops_grad,
        "ops_natgrad": ops_natgrad,
        "compiled_ops_grad": count_compiled_ops(grad_fn, params, pb),
        "compiled_ops_natgrad": count_compiled_ops(natgrad_fn, params, pb),
        "seconds_first_call_grad": compile_grad,
        "seconds_first_call_natgrad": compile_natgrad,
        "samples_grad": list(grad.samples),
        "samples_natgrad": list(nat.samples),
        "finite": finite,
    }


def _parse_dims(values: Sequence[str]) -> list[int]:
    dims = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            dim = int(part)
            if dim < 1:
                raise argparse.ArgumentTypeError(f"dimensions must be positive, got {dim}")
            dims.append(dim)
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``natgrad bench natural-gradient``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"D in {', '.join(map(str, QUICK_DIMS))} with {QUICK_REPEATS} repeats "
        "(well under a minute)",
    )
    parser.add_argument(
        "--out",
        default="bench-out",
        type=Path,
        help="directory for natural-gradient.json and .png (default: %(default)s)",
    )
    parser.add_argument(
        "--dims",
        nargs="+",
        default=None,
        metavar="D",
        help=f"dimensions to run (default: {' '.join(map(str, FULL_DIMS))}; '10 50' or '10,50')",
    )
    parser.add_argument(
        "--parameterizations",
        nargs="+",
        choices=PARAMETERIZATIONS,
        default=list(PARAMETERIZATIONS),
        metavar="NAME",
        help=f"subset of: {', '.join(PARAMETERIZATIONS)} (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed repeats per function (default: {FULL_REPEATS}, --quick: {QUICK_REPEATS})",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds each timed repeat lasts at least, by calling the function several times "
        f"(default: {FULL_MIN_TIME}, --quick: {QUICK_MIN_TIME})",
    )
    parser.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="(default: float64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    parser.add_argument(
        "--mode",
        choices=("forward", "reverse"),
        default="forward",
        help="natural_gradient's mode (default: forward)",
    )
    parser.add_argument(
        "--derivatives",
        choices=("closed_form", "autodiff"),
        default=None,
        help="natural_gradient's derivatives option (default: the library's default)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(args.quick)
    dims = _parse_dims(args.dims) if args.dims else list(QUICK_DIMS if quick else FULL_DIMS)
    repeats = args.repeats
    if repeats is None:
        repeats = QUICK_REPEATS if quick else FULL_REPEATS
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {repeats}")
    min_time = args.min_time
    if min_time is None:
        min_time = QUICK_MIN_TIME if quick else FULL_MIN_TIME
    return {
        "quick": quick,
        "dims": dims,
        "parameterizations": list(args.parameterizations),
        "repeats": repeats,
        "min_time": min_time,
        "dtype": args.dtype,
        "seed": args.seed,
        "mode": args.mode,
        "derivatives": args.derivatives,
        "ratio_goal": RATIO_GOAL,
        "loss": "negative ELBO of Bayesian linear regression: "
        "½ tr(AS) + ½ (m − b)ᵀA(m − b) − ½ log det S, A = XᵀX + I, X (2D, D) ~ N(0, 1/D)",
        "seconds_grad": "median seconds of jit(jax.grad(loss))(params)",
        "seconds_natgrad": "median seconds of jit(natural_gradient(params=params, "
        "grads=jax.grad(loss)(params), parameterization=name))",
        "timing": "block_until_ready per call; warm-up (compile) excluded; grad and natgrad "
        "alternated within each repeat (order reversed every repeat); median over repeats",
        "counts": "cholesky_* and triangular_solves_* count primitives in jax.make_jaxpr of the "
        "jitted function, recursively (cond: largest branch); compiled_ops_* count LAPACK "
        "potrf/trsm calls (or HLO ops) in the optimized HLO",
    }


def _print_results(rows: list[dict[str, Any]], file: Any = None) -> None:
    columns = [
        "parameterization",
        "D",
        "grad",
        "natgrad",
        "ratio",
        "ratio(min)",
        "flop ratio",
        "chol g/ng",
        "trsm g/ng",
        "D³trsm g/ng",
        "D³matmul g/ng",
        "HLO chol/trsm ng",
    ]
    table = []
    for r in rows:
        c = r["compiled_ops_natgrad"]
        compiled = f"{c['cholesky']}/{c['triangular_solve']}" if c else "n/a"
        table.append(
            [
                r["parameterization"],
                str(r["dim"]),
                common.format_seconds(r["seconds_grad"]),
                common.format_seconds(r["seconds_natgrad"]),
                f"{r['ratio']:.2f}",
                f"{r['ratio_min']:.2f}",
                f"{r['flop_ratio']:.2f}" if r["flop_ratio"] is not None else "n/a",
                f"{r['cholesky_grad']}/{r['cholesky_natgrad']}",
                f"{r['triangular_solves_grad']}/{r['triangular_solves_natgrad']}",
                f"{r['ops_grad']['triangular_solve_matrix']}/"
                f"{r['ops_natgrad']['triangular_solve_matrix']}",
                f"{r['ops_grad']['matmul_cubic']}/{r['ops_natgrad']['matmul_cubic']}",
                compiled,
            ]
        )
    common.print_table(
        f"natural gradient vs gradient (median seconds; ratio goal ≤ {RATIO_GOAL:g})",
        columns,
        table,
        highlight=[not (r["ratio"] <= RATIO_GOAL) for r in rows],
        file=file,
    )


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Ratio and seconds against D per parameterization; None without matplotlib."""
    fig = common.new_figure(figsize=(11, 4.5), layout="constrained")
    if fig is None:
        return None
    ax_ratio, ax_time = fig.subplots(1, 2)
    names = list(dict.fromkeys(r["parameterization"] for r in rows))
    for i, name in enumerate(names):
        own = sorted((r for r in rows if r["parameterization"] == name), key=lambda r: r["dim"])
        dims = [r["dim"] for r in own]
        color = f"C{i}"
        ax_ratio.plot(dims, [r["ratio"] for r in own], "o-", color=color, label=name)
        ax_time.plot(dims, [r["seconds_natgrad"] for r in own], "o-", color=color, label=name)
        ax_time.plot(dims, [r["seconds_grad"] for r in own], "x--", color=color, alpha=0.6)
    ax_ratio.axhline(RATIO_GOAL, color="k", ls=":", lw=1, label=f"goal {RATIO_GOAL:g}")
    ax_ratio.set(xscale="log", xlabel="D", ylabel="seconds(natgrad) / seconds(grad)")
    ax_ratio.set_title("natural gradient cost relative to the gradient")
    ax_ratio.set_ylim(bottom=0)
    ax_ratio.legend(fontsize="small")
    ax_time.set(xscale="log", yscale="log", xlabel="D", ylabel="median seconds per call")
    ax_time.set_title("natgrad (solid) and grad (dashed)")
    ax_time.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print a table, write ``OUT/natural-gradient.json`` (and ``.png``)."""
    config = _config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with common.jax_x64(config["dtype"] == "float64" or bool(jax.config.jax_enable_x64)):
        dtype = jnp.dtype(config["dtype"])
        environment = common.environment_info()
        base_key = jax.random.PRNGKey(config["seed"])
        for dim in config["dims"]:
            key = jax.random.fold_in(base_key, dim)  # the same problem whatever the dims list
            pb, (mean0, cov0) = make_problem(dim, key=key, dtype=dtype)
            for name in config["parameterizations"]:
                row = measure(
                    name,
                    initial_params(name, mean0, cov0),
                    pb,
                    repeats=config["repeats"],
                    min_time=config["min_time"],
                    mode=config["mode"],
                    derivatives=config["derivatives"],
                )
                rows.append(row)
                grad_s = common.format_seconds(row["seconds_grad"])
                natgrad_s = common.format_seconds(row["seconds_natgrad"])
                print(
                    f"  D={dim:<5d} {name:<24s} grad {grad_s:>9s}  natgrad {natgrad_s:>9s}"
                    f"  ratio {row['ratio']:6.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    config["wall_seconds"] = time.perf_counter() - start
    config["load_average_end"] = common.load_average()
    payload = {
        "benchmark": BENCHMARK,
        "config": config,
        "versions": environment["versions"],
        "machine": environment["machine"],
        "results": rows,
    }
    path = common.write_json(out / f"{BENCHMARK}.json", payload)
    _print_results(rows)
    load = environment["machine"]["load_average"]
    cpus = environment["machine"]["cpu_count_usable"] or 1
    if load and max(load[0], (config["load_average_end"] or [0])[0]) > cpus:
        print(
            f"note: the load average ({load[0]:g} at the start, "
            f"{config['load_average_end'][0]:g} at the end) exceeded the {cpus} CPUs; medians "
            "include waiting for other processes, ratio(min) and the flop ratio are less "
            "disturbed estimates"
            + (
                ""
                if "OPENBLAS_NUM_THREADS" in os.environ
                else "; OPENBLAS_NUM_THREADS=1 avoids LAPACK threads stalling on a busy machine"
            )
        )
    print(f"wrote {path}")
    if not args.no_plot:
        png = plot(rows, out / f"{BENCHMARK}.png")
        print(f"wrote {png}" if png else "matplotlib is not installed: no plot")
    return 0
