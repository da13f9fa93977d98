"""Demos behind ``natgrad demo``, and the helpers they share.

A demo runs a few optimizers on one objective, records the objective after every iteration, and
reports, against the best value any method reached, f* = maxₖ maxₜ fₖ(t):

* the first iteration t with fₖ(t) ≥ f* − τ and the wall-clock seconds to get there,
* the final value and whatever the demo adds (test accuracy, ...),

as a table on stdout, a JSON file and a PNG of the curves. The helpers here do the model-free
parts so that a second demo (a GP classifier, an MLP) only writes its objective and optimizers:

* :func:`run_chunked` runs a jit-compiled step in chunks of ``jax.lax.scan``, compiled and warmed
  up before the clock starts, returning a :class:`Trace` of values and cumulative seconds;
* :func:`progress` shows progress with rich (one final line without a terminal) or plain text;
* :func:`summarize`, :func:`print_table`, :func:`plot_traces`, :func:`environment_info` and
  :func:`write_json` produce the report, on top of :mod:`natgrad.bench.common` (the benchmarks'
  environment facts, JSON writer, table printer and Agg figures), so demos and benchmarks
  report alike. :func:`x64` is :func:`natgrad.bench.common.jax_x64`.

Optional imports (matplotlib, rich) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from natgrad.bench import common

#: Context manager ``x64(enabled)``: ``jax_enable_x64`` set inside the block, restored after.
x64 = common.jax_x64

__all__ = [
    "Trace",
    "environment_info",
    "iterations_to_target",
    "plot_traces",
    "print_table",
    "progress",
    "run_chunked",
    "summarize",
    "write_json",
    "x64",
]


# --------------------------------------------------------------------------------------------
# Running an optimizer.
# --------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """The objective along one optimizer's run.

    Attributes:
      name: the method's name.
      values: ``(T + 1,)`` objective f(t) after t iterations, t = 0, ..., T (f(0) at the start).
      seconds: ``(T + 1,)`` cumulative wall-clock seconds of the steps up to iteration t
        (compilation excluded; within a chunk of steps the chunk's time is spread evenly).
      compile_seconds: time of the untimed warm-up calls (compilation plus one run per chunk size).
      final_state: the optimizer's carry after the last iteration.
    """

    name: str
    values: np.ndarray
    seconds: np.ndarray
    compile_seconds: float
    final_state: Any = field(repr=False, default=None)

    @property
    def num_iterations(self) -> int:
        """T, the number of steps taken."""
        return len(self.values) - 1

    @property
    def seconds_per_iteration(self) -> float:
        """Mean wall-clock seconds per step."""
        return float(self.seconds[-1] / max(self.num_iterations, 1))


def run_chunked(
    step: Callable[[Any], tuple[Any, Any]],
    value: Callable[[Any], Any],
    state: Any,
    num_iterations: int,
    *,
    name: str,
    chunk_size: int = 10,
    on_chunk: Callable[[int], None] | None = None,
) -> Trace:
    """Run ``state ← step(state)`` T times in jit-compiled chunks and time them.

    ``step(state) -> (new_state, f)`` returns the objective f at the *old* state (what
    ``jax.value_and_grad`` gives for free), so a chunk of n steps is one ``jax.lax.scan`` that
    returns n values; ``value(state)`` gives f at the final state. Each distinct chunk length
    (``chunk_size`` and the remainder) is compiled and run once on the initial state before any
    timing, so the recorded seconds exclude compilation and Python overhead is paid once per chunk.

    Args:
      step: pure function of the optimizer state (a pytree), as above.
      value: pure function giving f of a state.
      state: the initial state.
      num_iterations: T ≥ 0.
      name: the method's name for the returned trace.
      chunk_size: steps per compiled call.
      on_chunk: called with the number of steps just done, outside the timed region.

    Returns:
      A :class:`Trace` with T + 1 values and cumulative seconds.
    """
    import jax

    if num_iterations < 0:
        raise ValueError(f"`num_iterations` must be ≥ 0, got {num_iterations}")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be ≥ 1, got {chunk_size}")

    def make_chunk(length):
        def chunk(s):
            return jax.lax.scan(lambda c, _: step(c), s, None, length=length)

        return jax.jit(chunk)

    lengths = [chunk_size] * (num_iterations // chunk_size)
    if num_iterations % chunk_size:
        lengths.append(num_iterations % chunk_size)
    compiled = {n: make_chunk(n) for n in set(lengths)}
    value_jit = jax.jit(value)

    start = time.perf_counter()
    for fn in compiled.values():
        jax.block_until_ready(fn(state))  # compile and warm up on the initial state; discarded
    jax.block_until_ready(value_jit(state))
    compile_seconds = time.perf_counter() - start

    values: list[np.ndarray] = []
    seconds = [0.0]
    elapsed = 0.0
    for n in lengths:
        t0 = time.perf_counter()
        state, chunk_values = compiled[n](state)
        jax.block_until_ready((state, chunk_values))
        dt = time.perf_counter() - t0
        seconds.extend(elapsed + dt * (k + 1) / n for k in range(n))
        elapsed += dt
        values.append(np.asarray(chunk_values, dtype=np.float64))
        if on_chunk is not None:
            on_chunk(n)
    values.append(np.asarray([value_jit(state)], dtype=np.float64))
    return Trace(
        name=name,
        values=np.concatenate(values),
        seconds=np.asarray(seconds),
        compile_seconds=compile_seconds,
        final_state=state,
    )


class _PlainProgress:
    """Fallback progress without rich: one line when a task starts and one when it ends."""

    def __init__(self, stream):
        self._stream = stream
        self._tasks: dict[int, list] = {}

    def add_task(self, description: str, total: int) -> int:
        task = len(self._tasks)
        self._tasks[task] = [description, total, 0, time.perf_counter()]
        print(f"{description}: {total} iterations ...", file=self._stream, flush=True)
        return task

    def advance(self, task: int, amount: int = 1) -> None:
        entry = self._tasks[task]
        entry[2] += amount
        if entry[2] >= entry[1]:
            print(
                f"{entry[0]}: done in {time.perf_counter() - entry[3]:.1f} s",
                file=self._stream,
                flush=True,
            )


class _NoProgress:
    def add_task(self, description: str, total: int) -> int:
        return 0

    def advance(self, task: int, amount: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Any]:
    """A progress display on stderr with ``add_task(description, total)`` and ``advance(task, n)``.

    Uses ``rich.progress`` when rich is installed: a live bar on a terminal, and without one
    (CI, pipes) a single final line per task instead of a stream of updates. Without rich, one
    line when a task starts and one when it ends. ``enabled=False`` shows nothing.
    """
    if not enabled:
        yield _NoProgress()
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        yield _PlainProgress(sys.stderr)
        return
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield bar


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def iterations_to_target(trace: Trace, target: float) -> tuple[int | None, float | None]:
    """The first iteration t with f(t) ≥ target and the seconds to it, or ``(None, None)``."""
    hits = np.flatnonzero(trace.values >= target)
    if hits.size == 0:
        return None, None
    t = int(hits[0])
    return t, float(trace.seconds[t])


def summarize(traces: Sequence[Trace], *, tolerance: float) -> tuple[float, list[dict]]:
    """The best value f* = max over all methods and iterations, and one row per method.

    Each row has ``method``, ``iterations`` (T), ``iterations_to_target`` and
    ``seconds_to_target`` (first t with f(t) ≥ f* − τ, ``None`` if never), ``final`` (f(T)),
    ``best`` (maxₜ f(t)), ``seconds_per_iteration``, ``total_seconds`` and ``compile_seconds``.
    Non-finite values (a diverged run) never count as the best.
    """
    finite = [v for t in traces for v in t.values[np.isfinite(t.values)]]
    if not finite:
        raise ValueError("every run diverged: no finite objective values to compare")
    best = float(np.max(finite))
    rows = []
    for trace in traces:
        its, secs = iterations_to_target(trace, best - tolerance)
        rows.append(
            {
                "method": trace.name,
                "iterations": trace.num_iterations,
                "iterations_to_target": its,
                "seconds_to_target": secs,
                "final": float(trace.values[-1]),
                "best": float(np.nanmax(trace.values)),
                "seconds_per_iteration": trace.seconds_per_iteration,
                "total_seconds": float(trace.seconds[-1]),
                "compile_seconds": trace.compile_seconds,
            }
        )
    return best, rows


def _format(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—" if value is None else str(value)
    return format(value, fmt)


def print_table(
    title: str, columns: Sequence[tuple[str, str, str]], rows: Sequence[dict], *, file=None
) -> None:
    """Print dict rows as a table: ``columns`` are ``(key, header, format spec)``; ``None`` → "—".

    Formats the cells and prints with :func:`natgrad.bench.common.print_table` (rich when it is
    installed, otherwise aligned plain text).
    """
    cells = [[_format(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    common.print_table(title, [header for _, header, _ in columns], cells, file=file)


def plot_traces(
    path: str | os.PathLike,
    traces: Sequence[Trace],
    *,
    best: float,
    tolerance: float,
    title: str,
    ylabel: str = "ELBO",
) -> Path | None:
    """Write a PNG of three panels: f(t) against t, the gap f* − f(t) against t and against seconds.

    The first panel shows the last 100 units below f*; the gap panels are on a log scale with the
    tolerance τ drawn as a dashed line (the gap is floored at 1e-6 so that the best run shows on
    the log axis), the time panel on a log time axis. Drawn on an Agg canvas
    (:func:`natgrad.bench.common.new_figure`, no pyplot state).

    Returns:
      ``path``, or None when matplotlib is not installed (nothing is written).
    """
    fig = common.new_figure(figsize=(15, 4.5), layout="constrained")
    if fig is None:
        return None
    path = Path(path)
    axes = fig.subplots(1, 3)
    ax_value, ax_gap, ax_time = axes
    floor = 1e-6
    lowest = best
    for trace in traces:
        its = np.arange(trace.num_iterations + 1)
        gap = np.maximum(best - trace.values, floor)
        (line,) = ax_value.plot(its, trace.values, label=trace.name)
        ax_gap.plot(its, gap, color=line.get_color(), label=trace.name)
        # From iteration 1 on: seconds[0] = 0 has no place on a log axis.
        ax_time.plot(trace.seconds[1:], gap[1:], color=line.get_color(), label=trace.name)
        finite = trace.values[np.isfinite(trace.values)]
        if finite.size:
            lowest = min(lowest, float(finite.min()))
    # The first iterates can be ~1000 nats below the optimum; show the last 100 nats of the climb
    # here and leave the fine approach to the gap panels.
    span = min(best - lowest, 100.0) + 1.0
    ax_value.set_ylim(best - span, best + 0.05 * span)
    ax_value.axhline(best, color="gray", lw=0.8, ls=":")
    ax_value.set(xlabel="iteration", ylabel=ylabel, title=f"{ylabel} against iteration")
    gap_label = f"best {ylabel} − {ylabel} (floored at {floor:g})"
    for ax in (ax_value, ax_gap):
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
    for ax, xlabel in ((ax_gap, "iteration"), (ax_time, "seconds (compilation excluded)")):
        ax.axhline(tolerance, color="gray", lw=0.8, ls="--", label=f"τ = {tolerance:g}")
        ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=gap_label)
    ax_time.set_xscale("log")
    ax_gap.set_title("gap to the best value")
    ax_time.set_title("gap against wall-clock time")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return path


def environment_info() -> dict[str, dict[str, Any]]:
    """:func:`natgrad.bench.common.environment_info` plus the demos' libraries' versions.

    Returns ``{"versions": {...}, "machine": {...}}``.
    """
    from importlib import metadata

    info = common.environment_info()
    for dist in ("scikit-learn", "matplotlib", "rich"):
        try:
            info["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info["versions"][dist] = None
    return info


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN or infinity
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as strict JSON: numpy values converted, NaN and ±∞ as ``null``.

    Sanitizes, then writes with :func:`natgrad.bench.common.write_json` (atomically, creating the
    folder).
    """
    return common.write_json(path, _jsonable(payload))
