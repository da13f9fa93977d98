"""Helpers shared by the benchmarks: environment facts, alternating timers, JSON, tables, plots.

Every benchmark in :mod:`natgrad.bench` follows the same recipe (see ``benchmarks/README.md``):
warm up (compile) each competitor, then time them *alternately* within each repeat so that they
share the machine's noise, report medians (with the minimum and the number of repeats), and
write one JSON file with ``{"benchmark", "config", "versions", "machine", "results"}``.

Example:
  >>> import jax.numpy as jnp
  >>> from natgrad.bench import common
  >>> x = jnp.ones(3)
  >>> timings = common.time_alternating({"sum": lambda: x.sum(), "max": lambda: x.max()},
  ...                                   repeats=3, min_time=0.0)
  >>> sorted(timings), timings["sum"].repeats
  (['max', 'sum'], 3)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

# --------------------------------------------------------------------------------------------
# Environment facts.
# --------------------------------------------------------------------------------------------

_VERSIONED = ("jax", "jaxlib", "optax", "numpy", "natgrad")
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _processor() -> str:
    name = platform.processor()
    if name:
        return name
    try:  # Linux leaves platform.processor() empty; /proc/cpuinfo has the model name.
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def library_versions() -> dict[str, str | None]:
    """Versions of python, jax, jaxlib, optax, numpy and natgrad (None if not installed)."""
    return {"python": platform.python_version(), **{p: _version(p) for p in _VERSIONED}}


def machine_info() -> dict[str, Any]:
    """Platform, processor, CPU counts and the jax backend and devices."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _processor(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS"),
        # Thread settings of the BLAS/LAPACK behind jaxlib's CPU linear algebra (Cholesky,
        # triangular solves): multi-threaded OpenBLAS busy-waits and stalls on a busy machine.
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where unavailable): above the CPU count,
    other processes compete for the CPUs and timings are noisy (compare minima then)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment_info() -> dict[str, dict[str, Any]]:
    """``{"versions": library_versions(), "machine": machine_info()}`` for the JSON output."""
    return {"versions": library_versions(), "machine": machine_info()}


@contextlib.contextmanager
def jax_x64(enabled: bool) -> Iterator[None]:
    """Set ``jax_enable_x64`` to ``enabled`` inside the block and restore it afterwards."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", bool(enabled))
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# --------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one function: median and minimum over repeats.

    Attributes:
      median: median over repeats of the mean time per call within a repeat.
      min: the smallest such time.
      repeats: number of repeats.
      number: calls per repeat (chosen so that a repeat lasts at least ``min_time``).
      samples: the per-call time of every repeat, in order.
    """

    median: float
    min: float
    repeats: int
    number: int
    samples: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "repeats": self.repeats,
            "number": self.number,
            "samples": list(self.samples),
        }


def _call_blocked(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def warm_up(fn: Callable[[], Any], calls: int = 1) -> float:
    """Call ``fn`` ``calls`` times (compiling it); return the seconds of the first call."""
    first = _call_blocked(fn)
    for _ in range(calls - 1):
        _call_blocked(fn)
    return first


def time_alternating(
    functions: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    min_time: float = 0.05,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time zero-argument functions alternately; every call is ``jax.block_until_ready``-ed.

    Each function is first warmed up (``warmup`` calls, so compilation is excluded), then the
    fastest of three calibration calls sets its calls per repeat so that a repeat lasts at least
    ``min_time`` seconds. Within each repeat every function runs once (its ``number`` calls back
    to back), in an order that reverses from one repeat to the next, so that the functions share
    slow drifts of the machine and neither always runs first.

    Args:
      functions: name → zero-argument callable returning jax arrays (or pytrees of them).
      repeats: number of repeats (≥ 1); the median is taken over them.
      min_time: seconds a repeat of one function should last at least (0 for a single call).
      warmup: calls before timing starts (≥ 1 to exclude compilation).

    Returns:
      name → :class:`Timing` with seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats}")
    names = list(functions)
    for name in names:
        for _ in range(max(warmup, 0)):
            _call_blocked(functions[name])
    number = {}
    for name in names:
        single = min(_call_blocked(functions[name]) for _ in range(3 if min_time > 0 else 1))
        number[name] = max(1, math.ceil(min_time / single)) if single > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            fn, n = functions[name], number[name]
            start = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(fn())
            samples[name].append((time.perf_counter() - start) / n)
    return {
        name: Timing(
            median=statistics.median(s),
            min=min(s),
            repeats=len(s),
            number=number[name],
            samples=tuple(s),
        )
        for name, s in samples.items()
    }


def median_time(
    fn: Callable[[], Any], *, repeats: int, min_time: float = 0.05, warmup: int = 1
) -> Timing:
    """:func:`time_alternating` for a single function."""
    return time_alternating({"fn": fn}, repeats=repeats, min_time=min_time, warmup=warmup)["fn"]


# --------------------------------------------------------------------------------------------
# Counting operations in traced and compiled computations.
# --------------------------------------------------------------------------------------------


def _subjaxprs(value: Any) -> Iterator[Any]:
    """Jaxprs inside an equation parameter (a Jaxpr, a ClosedJaxpr or a sequence of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subjaxprs(item)


def count_primitives(jaxpr: Any, classify: Callable[[Any], Any]) -> dict[str, float]:
    """Count equations of a jaxpr by the labels ``classify(eqn)`` returns, recursively.

    ``classify`` returns a sequence of labels (each counts 1) or a mapping label → amount (for
    example an estimate of floating-point operations).

    Sub-jaxprs (``pjit``/``jit``, ``custom_jvp_call``, ``custom_vjp_call``, loop bodies, ...)
    are counted once per equation that calls them; of the branches of a ``cond`` only the
    largest count is kept, since one branch runs. Loop bodies are counted once (per
    iteration). Accepts a ``Jaxpr`` or a ``ClosedJaxpr`` (as ``jax.make_jaxpr`` returns).
    """
    if not hasattr(jaxpr, "eqns"):
        jaxpr = jaxpr.jaxpr
    counts: dict[str, float] = {}

    def add(other: Mapping[str, float]) -> None:
        for key, value in other.items():
            counts[key] = counts.get(key, 0) + value

    for eqn in jaxpr.eqns:
        labels = classify(eqn)
        add(labels if isinstance(labels, Mapping) else {label: 1 for label in labels})
        if eqn.primitive.name == "cond":
            branch_counts = [count_primitives(b, classify) for b in eqn.params["branches"]]
            keys = {k for c in branch_counts for k in c}
            add({k: max(c.get(k, 0) for c in branch_counts) for k in keys})
            continue
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                add(count_primitives(sub, classify))
    return counts


_HLO_PATTERNS = {
    # CPU lowers these to LAPACK custom calls (potrf, trsm); other backends to other calls or ops.
    "cholesky": re.compile(r'custom_call_target="[^"]*potrf[^"]*"|\scholesky\('),
    "triangular_solve": re.compile(r'custom_call_target="[^"]*trsm[^"]*"|\striangular-solve\('),
}


def count_compiled(text: str | None) -> dict[str, int] | None:
    """Count Cholesky factorizations and triangular solves in compiled (optimized) HLO text.

    Counts one per HLO instruction (a line), after XLA's common-subexpression elimination;
    returns None when the backend gave no text.
    """
    if not text:
        return None
    counts = dict.fromkeys(_HLO_PATTERNS, 0)
    for line in text.splitlines():
        for key, pattern in _HLO_PATTERNS.items():
            if pattern.search(line):
                counts[key] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Output: JSON, tables, plots.
# --------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy and jax arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON to ``path`` (creating directories, atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=True) + "\n")
    tmp.replace(path)
    return path


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    highlight: Sequence[bool] | None = None,
    file: Any = None,
) -> None:
    """Print a table with ``rich`` when it is installed, else as aligned plain text.

    ``highlight[i]`` marks row ``i`` (in red with rich, with a ``*`` in plain text).
    """
    file = sys.stdout if file is None else file
    highlight = list(highlight) if highlight is not None else [False] * len(rows)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(title, file=file)
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)), file=file)
        for row, mark in zip(rows, highlight, strict=True):
            line = "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
            print(line + (" *" if mark else ""), file=file)
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    for row, mark in zip(rows, highlight, strict=True):
        table.add_row(*row, style="red" if mark else None)
    console = Console(file=file)
    if not console.is_terminal:  # rich assumes 80 columns when piped: do not wrap the table
        console = Console(file=file, width=max(console.width, 200))
    console.print(table)


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` drawn with the Agg canvas (no pyplot state), or None.

    None when matplotlib is not installed; save it with ``fig.savefig(path)``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def format_seconds(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits (``12.3 µs``, ``1.2 s``)."""
    if not math.isfinite(seconds):
        return str(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"
