"""Data-parallel training steps against single-device ones, on four devices.

Run by ``tests/test_data_parallel.py`` in a fresh process (the device count is fixed when JAX
starts), float64:

* one process with four emulated CPU devices::

      XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_ENABLE_X64=1 JAX_PLATFORMS=cpu \
          python tests/data_parallel_script.py

* or P processes with 4/P devices each, every one started with
  ``--coordinator HOST:PORT --num-processes P --process-id i`` (``jax.distributed``; each
  process hands only its rows of the batch to :func:`natgrad.parallel.shard_local_batch`).

For each case in :data:`CASES` (name → function returning a :class:`Case`), the jitted
training step runs :data:`NUM_STEPS` times (a) on one device with unsharded inputs and (b) on
``data_mesh()`` with the batch sharded and params/state replicated. Params and every optimizer
state leaf must agree to rtol 1e-10, atol 1e-12 (float64; the runs differ only in the order of
the batch sums, whose rounding is ~1e-16 relative and is amplified by at most a few steps of a
well-conditioned problem), integers exactly. The script also asserts that the batch really is
split over the four devices, that the outputs come back replicated, that the steps after the
first do not recompile, and that the compiled sharded step contains all-reduces (GSPMD inserted
the communication).

Add an optimizer by adding an entry to :data:`CASES`: a function building its :class:`Case`
(initial params and state, a ``step(params, state, batch, key)`` and the batches); the test runs
every entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import natgrad
from natgrad.gp import SVGP, hybrid, kernels, likelihoods

NUM_DEVICES = 4
NUM_STEPS = 3
RTOL, ATOL = 1e-10, 1e-12
PyTree = Any


@dataclasses.dataclass
class Case:
    """One optimizer's data-parallel check.

    Attributes:
      params: initial parameters (numpy or jax arrays).
      state: the optimizer's initial state (``tx.init(params)``).
      step: ``step(params, state, batch, key) -> (params, state)``, plain JAX (jitted here).
      batches: :data:`NUM_STEPS` batches, pytrees of numpy arrays with a common leading axis
        divisible by :data:`NUM_DEVICES` (the axis that gets sharded).
      keys: :data:`NUM_STEPS` PRNG keys, one per step (the same in both runs), or None.
    """

    params: PyTree
    state: PyTree
    step: Callable
    batches: list
    keys: Any = None


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------

MLP_SIZES = (5, 16, 3)  # inputs, hidden, classes
MLP_BATCH = 32


def _mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def hessian_free_case(curvature: str) -> Case:
    """A 5-16-3 tanh MLP, softmax cross-entropy, batches of 32, Hessian-free with ``curvature``."""
    d_in, hidden, classes = MLP_SIZES
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((d_in, classes))
    batches = []
    for _ in range(NUM_STEPS):
        x = rng.standard_normal((MLP_BATCH, d_in))
        y = np.argmax(x @ teacher + 0.5 * rng.standard_normal((MLP_BATCH, classes)), axis=1)
        batches.append((x, y.astype(np.int32)))
    params = {
        "w1": rng.standard_normal((d_in, hidden)) / np.sqrt(d_in),
        "b1": np.zeros(hidden),
        "w2": rng.standard_normal((hidden, classes)) / np.sqrt(hidden),
        "b2": np.zeros(classes),
    }
    loss = natgrad.losses.SoftmaxCrossEntropy()
    tx = natgrad.hessian_free(_mlp, loss, curvature=curvature, learning_rate=1.0, damping=1.0)

    def step(params, state, batch, key):
        x, y = batch
        value, grads = jax.value_and_grad(lambda p: loss(_mlp(p, x), y))(params)
        updates, state = tx.update(grads, state, params, batch=batch, key=key, value=value)
        return optax.apply_updates(params, updates), state

    keys = jax.random.split(jax.random.key(1), NUM_STEPS) if curvature == "fisher_mc" else None
    return Case(params, tx.init(params), step, batches, keys)


def _conv_net(params, x):
    h = jax.lax.conv_general_dilated(
        x, params["k"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + params["c"])
    return h.reshape(h.shape[0], -1) @ params["w"] + params["b"]


def kfac_case(model: str, fisher: str) -> Case:
    """K-FAC with statistics and inverses every step, on the 5-16-3 MLP ("mlp") or a small
    convolution net ("conv": 6×6×2 inputs, 3×3 stride-2 conv to 4 channels, dense to 3)."""
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(NUM_STEPS):
        shape = (MLP_BATCH, MLP_SIZES[0]) if model == "mlp" else (MLP_BATCH, 6, 6, 2)
        x = rng.standard_normal(shape)
        y = rng.integers(0, 3, MLP_BATCH).astype(np.int32)
        batches.append((x, y))
    if model == "mlp":
        apply, params = _mlp, hessian_free_case("ggn").params
    else:
        apply = _conv_net
        params = {
            "k": rng.standard_normal((3, 3, 2, 4)) / np.sqrt(18),
            "c": np.zeros(4),
            "w": rng.standard_normal((36, 3)) / 6,
            "b": np.zeros(3),
        }
    loss = natgrad.losses.SoftmaxCrossEntropy()
    tx = natgrad.kfac(
        apply, loss, batches[0][0], fisher=fisher, statistics_every=1, inverse_every=1
    )

    def step(params, state, batch, key):
        x, y = batch
        grads = jax.grad(lambda p: loss(apply(p, x), y))(params)
        updates, state = tx.update(grads, state, params, batch=batch, key=key)
        return optax.apply_updates(params, updates), state

    keys = jax.random.split(jax.random.key(3), NUM_STEPS) if fisher == "mc" else None
    return Case(params, tx.init(params), step, batches, keys)


def natural_vi_case() -> Case:
    """Bayesian logistic regression, q(w) = N(m, LLᵀ), prior N(0, I), minibatches of 32 of N = 96.

    −ELBO(q) = KL(q‖p) − (N/B)·Σ_{n∈batch} (1/S)·Σ_s log σ(ỹₙ xₙᵀw_s),  w_s = m + Lε_s,
    ỹ ∈ {−1, +1}, with S = 16 fixed draws ε_s (the same every step: a deterministic objective).
    """
    dim, num_data, batch_size, num_samples = 4, 96, 32, 16
    rng = np.random.default_rng(2)
    x = rng.standard_normal((num_data, dim))
    y = np.where(x @ rng.standard_normal(dim) + 0.5 * rng.standard_normal(num_data) > 0, 1.0, -1.0)
    eps = jnp.asarray(rng.standard_normal((num_samples, dim)))
    q = natgrad.gaussian.mean_cholesky
    prior = (jnp.zeros(dim), jnp.eye(dim))

    def neg_elbo(params, batch):
        xb, yb = batch
        mean, scale = params
        w = mean + eps @ scale.T  # (S, D): w_s = m + Lε_s
        log_lik = jnp.mean(jax.nn.log_sigmoid(yb[:, None] * (xb @ w.T)), axis=1)  # (B,)
        return q.kl(params, prior) - num_data / xb.shape[0] * jnp.sum(log_lik)

    tx = natgrad.natural_vi(0.5, "mean_cholesky", step_parameterization="natural")
    params = (np.zeros(dim), np.eye(dim))

    def step(params, state, batch, key):
        del key
        updates, state = tx.update(jax.grad(neg_elbo)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    order = rng.permutation(num_data).reshape(-1, batch_size)
    batches = [(x[i], y[i]) for i in order[:NUM_STEPS]]
    return Case(params, tx.init(params), step, batches)


def gp_hybrid_case() -> Case:
    """An SVGP classifier (Bernoulli-logit, M = 8) on minibatches of 32 of N = 96: natural steps
    on q(u), Adam on the rest, alternating (natgrad.gp.hybrid)."""
    num_data, batch_size = 96, 32
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 6, (num_data, 1))
    y = (np.sin(2 * x[:, 0]) + 0.3 * rng.standard_normal(num_data) > 0).astype(np.float64)
    model = SVGP(kernels.SquaredExponential(), likelihoods.Bernoulli("logit"))
    params = model.init(jnp.linspace(0.5, 5.5, 8)[:, None])
    tx = hybrid(0.5, optax.adam(1e-2), model.parameterization)

    def loss(p, batch):
        return -model.elbo(p, *batch, num_data=num_data)

    def step(params, state, batch, key):
        del key
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params, value_fn=lambda p: loss(p, batch))
        return optax.apply_updates(params, updates), state

    order = rng.permutation(num_data).reshape(-1, batch_size)
    batches = [(x[i], y[i]) for i in order[:NUM_STEPS]]
    return Case(params, tx.init(params), step, batches)


CASES: dict[str, Callable[[], Case]] = {
    "hessian_free_ggn": functools.partial(hessian_free_case, "ggn"),
    "hessian_free_fisher_mc": functools.partial(hessian_free_case, "fisher_mc"),
    "hessian_free_empirical_fisher": functools.partial(hessian_free_case, "empirical_fisher"),
    "kfac_mlp_mc": functools.partial(kfac_case, "mlp", "mc"),
    "kfac_conv_exact": functools.partial(kfac_case, "conv", "exact"),
    "natural_vi": natural_vi_case,
    "gp_hybrid": gp_hybrid_case,
}


# ------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------


def _host(x) -> np.ndarray:
    """A replicated (or single-device) array's value; works when other processes hold copies."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def _run(case: Case, place_batch, place_replicated):
    """NUM_STEPS jitted steps; returns final (params, state), the jitted step and its last args."""
    params, state = place_replicated((case.params, case.state))
    step = jax.jit(case.step)
    cache_sizes = []
    for k in range(NUM_STEPS):
        batch = place_batch(case.batches[k])
        key = None if case.keys is None else place_replicated(case.keys[k])
        args = (params, state, batch, key)
        params, state = step(*args)
        if hasattr(step, "_cache_size"):  # private jax API; skip the check without it
            cache_sizes.append(step._cache_size())
    # The outputs feed the next step with the same shardings: no step after the first compiles.
    assert len(set(cache_sizes)) <= 1, f"the jitted step recompiled: cache sizes {cache_sizes}"
    return (params, state), step, args


def _check_sharded(name: str, batch, outputs, step, args) -> None:
    """The batch is split four ways, the outputs are replicated, the step all-reduces."""
    for leaf in jax.tree.leaves(batch):
        sharding = leaf.sharding
        assert isinstance(sharding, NamedSharding), (name, sharding)
        assert sharding.mesh.shape == {"data": NUM_DEVICES}, (name, sharding.mesh)
        assert sharding.spec == P("data"), (name, sharding.spec)
        assert len(sharding.device_set) == NUM_DEVICES, (name, sharding.device_set)
        shard_rows = {s.data.shape[0] for s in leaf.addressable_shards}
        assert shard_rows == {leaf.shape[0] // NUM_DEVICES}, (name, shard_rows)
    for leaf in jax.tree.leaves(outputs):
        assert leaf.sharding.is_fully_replicated, (name, leaf.sharding)
        assert len(leaf.sharding.device_set) == NUM_DEVICES, (name, leaf.sharding)
    hlo = step.lower(*args).compile().as_text()
    assert "all-reduce" in hlo, f"{name}: the compiled sharded step has no all-reduce"


def _compare(name: str, single, sharded, initial_params) -> float:
    """Assert agreement; returns the largest |sharded − single| / (atol + rtol·|single|), the
    fraction of the tolerance used."""
    worst = 0.0
    single_leaves = jax.tree_util.tree_leaves_with_path(single)
    sharded_leaves = jax.tree.leaves(sharded)
    assert len(single_leaves) == len(sharded_leaves), name
    for (path, a), b in zip(single_leaves, sharded_leaves, strict=True):
        a, b = _host(a), _host(b)
        where = f"{name}: (params, state){jax.tree_util.keystr(path)}"
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype)
        if np.issubdtype(a.dtype, np.floating):
            assert a.dtype == np.float64, where
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=where)
            used = np.abs(b - a) / (ATOL + RTOL * np.abs(a))
            worst = max(worst, float(np.max(np.where(np.isfinite(a), used, 0.0), initial=0.0)))
        else:
            np.testing.assert_array_equal(b, a, err_msg=where)
    # The optimizer did move the parameters (a check that compares frozen params proves nothing).
    moved = [
        not np.allclose(_host(p), np.asarray(p0))
        for p, p0 in zip(jax.tree.leaves(single[0]), jax.tree.leaves(initial_params), strict=True)
    ]
    assert any(moved), f"{name}: the parameters did not change in {NUM_STEPS} steps"
    return worst


def check_case(name: str, *, local_rows: bool) -> tuple[float, float]:
    """Run one case both ways and compare; returns the seconds it took and the fraction of the
    tolerance used."""
    start = time.perf_counter()
    case = CASES[name]()
    mesh = natgrad.parallel.data_mesh()
    one_device = jax.local_devices()[0]
    (single, _, _) = _run(
        case,
        lambda b: jax.device_put(b, one_device),
        lambda t: jax.device_put(t, one_device),
    )
    if local_rows:
        rank, num_processes = jax.process_index(), jax.process_count()

        def place_batch(batch):
            local = jax.tree.map(lambda a: np.split(a, num_processes)[rank], batch)
            sharded = natgrad.parallel.shard_local_batch(local, mesh)
            # The global batch is the processes' parts in process order: the same array as
            # shard_batch of the whole batch, shard by shard.
            whole = natgrad.parallel.shard_batch(batch, mesh)
            for s, w in zip(jax.tree.leaves(sharded), jax.tree.leaves(whole), strict=True):
                assert s.shape == w.shape and s.sharding == w.sharding, (name, s.shape, w.shape)
                pairs = zip(s.addressable_shards, w.addressable_shards, strict=True)
                for s_shard, w_shard in pairs:
                    assert s_shard.index == w_shard.index, name
                    np.testing.assert_array_equal(s_shard.data, w_shard.data)
            return sharded
    else:

        def place_batch(batch):
            return natgrad.parallel.shard_batch(batch, mesh)

    sharded, step, args = _run(case, place_batch, lambda t: natgrad.parallel.replicate(t, mesh))
    _check_sharded(name, args[2], sharded, step, args)
    worst = _compare(name, single, sharded, case.params)
    return time.perf_counter() - start, worst


def check_errors() -> None:
    """shard_batch and shard_local_batch refuse a leading axis the devices cannot split."""
    mesh = natgrad.parallel.data_mesh()
    for fn in (natgrad.parallel.shard_batch, natgrad.parallel.shard_local_batch):
        rows = 6 if fn is natgrad.parallel.shard_batch else 3
        try:
            fn({"x": np.zeros((8, 2)), "y": np.zeros((rows,))}, mesh)
        except ValueError as err:
            message = str(err)
            assert "['y']" in message and f"({rows},)" in message, message
            assert f"over the {NUM_DEVICES} devices" in message, message
            assert "does not split evenly" in message, message
        else:
            raise AssertionError(f"{fn.__name__} accepted {rows} rows")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"some of {list(CASES)} (default: all)")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (several processes)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--errors", action="store_true", help="check the ValueErrors only")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {list(CASES)}")
    if args.num_processes > 1:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
    assert len(jax.devices()) == NUM_DEVICES, f"need {NUM_DEVICES} devices, got {jax.devices()}"
    assert jax.process_count() == args.num_processes
    if args.errors:
        check_errors()
        print(f"process {jax.process_index()}: errors ok", flush=True)
        return 0
    for name in args.cases or CASES:
        seconds, worst = check_case(name, local_rows=args.num_processes > 1)
        print(
            f"process {jax.process_index()}: {name} ok ({seconds:.1f} s, "
            f"{worst:.1e} of the tolerance used)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
