"""The ``natgrad`` command line: ``natgrad demo`` and ``natgrad bench NAME``."""

from __future__ import annotations

import argparse
import sys


def _add_demo(subparsers) -> None:
    from natgrad.demo import digits, gp_classifier, logistic

    parser = subparsers.add_parser(
        "demo",
        help="Bayesian logistic regression on breast cancer (natural-gradient VI against Adam), "
        "an MLP on digits (Hessian-free natural gradients against SGD and Adam), then a sparse "
        "GP classifier on breast cancer (natural gradients + Adam against Adam).",
        description=logistic.DESCRIPTION
        + "\n"
        + digits.DESCRIPTION
        + "\n"
        + gp_classifier.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logistic.add_arguments(parser)
    digits.add_arguments(parser)
    gp_classifier.add_arguments(parser)
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    """``natgrad demo``: the logistic, digits and GP parts in turn (``--only`` picks one)."""
    from natgrad.demo import digits, gp_classifier, logistic

    status = 0
    if args.only in (None, "logistic"):
        status = int(logistic.run(args) or 0)
    if args.only in (None, "digits"):
        status = max(status, int(digits.run(args) or 0))
    if args.only in (None, "gp"):
        status = max(status, int(gp_classifier.run(args) or 0))
    return status


def _add_bench(subparsers) -> None:
    from natgrad.bench import kfac as bench_kfac
    from natgrad.bench import mnist_mlp as bench_mnist_mlp
    from natgrad.bench import natural_gradient as bench_natural_gradient
    from natgrad.bench import svgp as bench_svgp

    bench = subparsers.add_parser("bench", help="Benchmarks that write JSON results.")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    parser = benches.add_parser(
        "natural-gradient",
        help="Cost of a natural gradient against the plain gradient, per parameterization and D.",
        description=bench_natural_gradient.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_natural_gradient.add_arguments(parser)
    parser.set_defaults(run=bench_natural_gradient.run)
    parser = benches.add_parser(
        "mnist-mlp",
        help="An MLP on MNIST: SGD, Adam, Hessian-free natural gradients; accuracy against time.",
        description=bench_mnist_mlp.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_mnist_mlp.add_arguments(parser)
    parser.set_defaults(run=bench_mnist_mlp.run)
    parser = benches.add_parser(
        "svgp",
        help="Sparse variational GPs: natural gradients + Adam against Adam; ELBO against time.",
        description=bench_svgp.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_svgp.add_arguments(parser)
    parser.set_defaults(run=bench_svgp.run)
    parser = benches.add_parser(
        "kfac",
        help="K-FAC against kfac-jax, SGD and Adam on an MNIST MLP and CNN.",
        description=bench_kfac.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_kfac.add_arguments(parser)
    parser.set_defaults(run=bench_kfac.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natgrad",
        description="Natural-gradient optimization for JAX: demos and benchmarks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
