"""Benchmarks behind ``natgrad bench NAME``; each writes ``DIR/NAME.json`` (and a PNG plot).

* :mod:`natgrad.bench.natural_gradient`: the cost of a natural gradient against the plain
  gradient of the same loss, per Gaussian parameterization and dimension D.
* :mod:`natgrad.bench.mnist_mlp`: a 784-128-10 MLP on MNIST trained by SGD, Adam, three
  Hessian-free natural gradients and a rank-one reference step; accuracy against time.
* :mod:`natgrad.bench.classifier`: the engine behind it (and the digits demo): one
  initialization, one data order, interleaved timed steps, the cost of a curvature product.
* :mod:`natgrad.bench.common`: shared helpers (environment facts, alternating timers, JSON
  output, tables, plots) for every benchmark.
"""
