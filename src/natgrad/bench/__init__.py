"""Benchmarks behind ``natgrad bench NAME``; each writes ``DIR/NAME.json`` (and a PNG plot).

* :mod:`natgrad.bench.natural_gradient`: the cost of a natural gradient against the plain
  gradient of the same loss, per Gaussian parameterization and dimension D.
* :mod:`natgrad.bench.common`: shared helpers (environment facts, alternating timers, JSON
  output, tables, plots) for every benchmark.
"""
