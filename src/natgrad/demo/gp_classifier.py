"""A sparse GP classifier on breast cancer: natural gradients plus Adam against Adam alone.

The third part of ``natgrad demo``: ``natgrad bench svgp``'s classification comparison at demo
size. An :class:`natgrad.gp.SVGP` with a Bernoulli (probit) likelihood, a squared-exponential
ARD kernel and M = 50 inducing inputs (a random subset of the training rows) is trained on the
breast-cancer data (:func:`natgrad.data.load_breast_cancer`, the 30 standardized features
without the bias column) from one initialization by

* ``ng_adam``: :func:`natgrad.gp.hybrid` with natural steps on q(u), γ warmed up log-linearly
  from 10⁻⁴ to 0.1 over 5 steps, and Adam(0.01) on the kernel's hyperparameters and the
  inducing inputs (``mode="joint"``: one backward pass per step);
* ``adam``: Adam(0.01) on everything, q(u)'s mean and Cholesky factor included.

Both run in float64, jit-compiled in chunks of ``jax.lax.scan`` and timed after compilation
(:func:`natgrad.bench.svgp.train`, which alternates the methods chunk by chunk). The table gives
the iterations and seconds to within 1 nat of the best ELBO either reached, the final ELBO, the
test accuracy and the median seconds per iteration.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

NAME = "gp"
NUM_INDUCING = 50
TOLERANCE = 1.0
DEFAULTS = {"iterations": 1000, "chunk_size": 50, "seed": 0}
QUICK = {"iterations": 150}

DESCRIPTION = f"""\
Then: a sparse variational GP classifier (natgrad.gp.SVGP, Bernoulli probit likelihood,
squared-exponential ARD kernel, M = {NUM_INDUCING} inducing inputs) on the same breast-cancer split,
trained by ng_adam (natural steps on q(u) with γ warmed up from 1e-4 to 0.1, plus Adam(0.01) on
the kernel and inducing inputs) and by adam (Adam(0.01) on everything) for
{DEFAULTS["iterations"]} iterations each ({QUICK["iterations"]} with --quick; --gp-iterations). The
table gives the iterations and seconds to within {TOLERANCE:g} nat of the best ELBO, the final ELBO,
the test accuracy and the seconds per iteration:

  demo-gp.json        configuration, versions, machine, one row per method, the ELBO traces;
  demo-gp.png         ELBO against iteration, and the gap to the best ELBO against iteration
                      and seconds.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The GP options of ``natgrad demo`` (``--out``, ``--quick``, ``--no-progress`` and
    ``--only`` are shared with the other parts)."""
    parser.add_argument(
        "--gp-iterations",
        type=int,
        default=None,
        help=f"iterations of each GP method (default {DEFAULTS['iterations']}; "
        f"{QUICK['iterations']} with --quick)",
    )
    parser.add_argument(
        "--gp-seed",
        type=int,
        default=DEFAULTS["seed"],
        help="seed of the GP part's split and inducing inputs (default %(default)s)",
    )


def _config(args: argparse.Namespace) -> dict:
    from natgrad.bench import svgp

    quick = bool(getattr(args, "quick", False))
    iterations = getattr(args, "gp_iterations", None)
    if iterations is None:
        iterations = (QUICK if quick else DEFAULTS)["iterations"]
    if iterations < 1:
        raise SystemExit("natgrad demo: --gp-iterations must be ≥ 1")
    return {
        "data": "breast_cancer",
        "quick": quick,
        "seed": getattr(args, "gp_seed", DEFAULTS["seed"]),
        "iterations": iterations,
        "chunk_size": min(DEFAULTS["chunk_size"], iterations),
        "num_inducing": NUM_INDUCING,
        "model": "SVGP, Bernoulli (probit), squared exponential ARD (initial lengthscale √30, "
        "variance 1), whitened, q(u) in mean_cholesky",
        "inducing_inputs": "a random subset of the training rows, trained",
        "dtype": "float64",
        "tolerance_nats": TOLERANCE,
        "methods": {
            "ng_adam": f"natgrad.gp.hybrid(log_linear_warmup{svgp.WARMUP}, "
            f"adam({svgp.ADAM_LR:g}), mode='joint')",
            "adam": f"adam({svgp.ADAM_LR:g}) on everything",
        },
    }


def _problem(config: dict):
    import jax.numpy as jnp
    import optax

    from natgrad.bench import svgp
    from natgrad.data import load_breast_cancer
    from natgrad.gp import SVGP, hybrid, kernels, likelihoods
    from natgrad.schedules import log_linear_warmup

    data = load_breast_cancer(seed=config["seed"])
    x, x_test = data.x_train[:, :-1], data.x_test[:, :-1]  # no bias column for a GP
    rng = np.random.default_rng(config["seed"])
    z = x[rng.choice(x.shape[0], config["num_inducing"], replace=False)]
    kernel = kernels.SquaredExponential(lengthscale=math.sqrt(x.shape[1]), variance=1.0)
    model = SVGP(kernel, likelihoods.Bernoulli("probit"))
    params = model.init(jnp.asarray(z))
    x_test_j, y_test = jnp.asarray(x_test), np.asarray(data.y_test)

    def accuracy(p):
        mean, _ = model.predict_y(p, x_test_j)
        return float(np.mean((np.asarray(mean)[:, 0] > 0.5) == (y_test == 1)))

    methods = {
        "ng_adam": hybrid(log_linear_warmup(*svgp.WARMUP), optax.adam(svgp.ADAM_LR), mode="joint"),
        "adam": hybrid(None, optax.adam(svgp.ADAM_LR)),
    }
    problem = svgp.Problem(
        name="breast_cancer",
        model=model,
        params=params,
        x=jnp.asarray(x),
        y=jnp.asarray(data.y_train, jnp.float64),
        x_test=x_test_j,
        y_test=jnp.asarray(y_test, jnp.float64),
        methods=methods,
        iterations=config["iterations"],
        chunk_size=config["chunk_size"],
        metric_name="test_accuracy",
        metric=accuracy,
        info={},
        mode="joint",
    )
    return problem, data


COLUMNS = (
    ("method", "method", ""),
    ("iterations_to_target", f"iterations to best − {TOLERANCE:g}", "d"),
    ("seconds_to_target", f"seconds to best − {TOLERANCE:g}", ".2f"),
    ("final_elbo", "final ELBO", ".2f"),
    ("test_metric", "test accuracy", ".3f"),
    ("ms_per_iteration", "ms / iteration", ".2f"),
    ("iterations", "iterations run", "d"),
)


def run(args: argparse.Namespace) -> int:
    """The GP part of ``natgrad demo``: table, ``demo-gp.json`` and ``demo-gp.png``."""
    from natgrad import demo
    from natgrad.bench import svgp

    config = _config(args)
    out = Path(getattr(args, "out", "natgrad-out"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with demo.x64(True):
        problem, data = _problem(config)
        with demo.progress(not getattr(args, "no_progress", False)) as bar:
            task = bar.add_task("GP classifier", total=config["iterations"])
            runs = svgp.train(problem, seed=config["seed"], on_chunk=lambda n: bar.advance(task, n))
        rows = svgp.summarize(problem, runs)
        info = demo.environment_info()
    config["wall_seconds"] = time.perf_counter() - start
    for row in rows:
        row.pop("trace", None)
        row["ms_per_iteration"] = 1e3 * row["seconds_per_iteration"]
    best = rows[0]["best_elbo"]
    demo.print_table(
        f"Sparse GP classifier (M = {config['num_inducing']}), breast cancer "
        f"({len(data.y_train)} train, {len(data.y_test)} test): best ELBO {best:.2f}",
        COLUMNS,
        rows,
    )
    traces = [
        demo.Trace(name, run.values, run.seconds, run.compile_seconds) for name, run in runs.items()
    ]
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
        title="Sparse GP classifier on breast cancer: natural gradients + Adam vs Adam",
    )
    print(f"wrote {json_path}", flush=True)
    if png_path is None:
        print("matplotlib is not installed: no plot (pip install natgrad[demo])", file=sys.stderr)
    else:
        print(f"wrote {png_path}", flush=True)
    print(f"GP part: {config['wall_seconds']:.1f} s", file=sys.stderr)
    return 0
