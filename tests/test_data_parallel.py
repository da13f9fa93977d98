"""natgrad.parallel: sharded training steps equal single-device ones, and the helpers' errors.

The device count is fixed when JAX starts, so the four-device checks run
``tests/data_parallel_script.py`` in fresh processes (four emulated CPU devices, float64): each
optimizer case, the errors that need more than one device, and two processes of two devices
each joined by ``jax.distributed`` (each handing only its rows of the batch to
``shard_local_batch``). The rest runs here on however many devices this process has.
"""

import concurrent.futures
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax

jax.config.update("jax_enable_x64", True)

import data_parallel_script  # noqa: E402  (tests/ is on sys.path, as for helpers)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import natgrad  # noqa: E402
from natgrad import parallel  # noqa: E402

SCRIPT = pathlib.Path(data_parallel_script.__file__)
TIMEOUT = 300  # seconds per subprocess; a case takes 4–11 s on an idle CPU core


def _env(devices_per_process: int) -> dict:
    """This environment with D emulated CPU devices, float64 and the CPU backend."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}"
    env.update(JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    return env


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_sharded_steps_match_single_device_steps():
    """Every case of the script, each in its own four-device process (as many at once as
    there are CPU cores: the time is mostly XLA compilation): 3 jitted steps on 4 devices
    (batch sharded, params/state replicated) against 3 on one; params and every state leaf to
    rtol 1e-10 (float64, only the order of the batch sums differs), integer diagnostics
    exactly; the batch split 4 ways, the outputs replicated, all-reduces in the compiled step
    (the script's docstring has the details)."""
    cases = list(data_parallel_script.CASES)
    assert {"hessian_free_ggn", "kfac_mlp_mc", "natural_vi", "gp_hybrid"} <= set(cases)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        results = dict(zip(cases, pool.map(_run_script, cases), strict=True))
    failures = [
        f"--- {case} (exit {r.returncode})\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        for case, r in results.items()
        if r.returncode != 0 or f"{case} ok" not in r.stdout
    ]
    assert not failures, "\n".join(failures)


def test_uneven_batch_errors_on_four_devices():
    """6 rows on 4 devices: ValueError naming the leaf, its shape and the device count."""
    result = _run_script("--errors")
    assert result.returncode == 0 and "errors ok" in result.stdout, result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_each_with_its_own_rows():
    """Two processes × two devices (jax.distributed, gloo): each passes half the batch to
    shard_local_batch; the global batch equals shard_batch of the whole one, shard by shard,
    and the natural_vi steps match the single-device ones."""
    coordinator = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "natural_vi", "--coordinator", coordinator]
            + ["--num-processes", "2", "--process-id", str(rank)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            # A process that fails leaves the other waiting in a collective: a shorter limit.
            outputs.append(proc.communicate(timeout=TIMEOUT / 2))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {rank}\nstdout:\n{out}\nstderr:\n{err}"
        assert f"process {rank}: natural_vi ok" in out


# ------------------------------------------------------------------------------------------
# In this process (one device or more)
# ------------------------------------------------------------------------------------------


def test_data_mesh_axis_names_and_devices():
    mesh = parallel.data_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.shape == {"data": len(jax.devices())}
    assert list(mesh.devices.flat) == jax.devices()
    named = parallel.data_mesh(jax.devices()[:1], axis_name="batch")
    assert named.axis_names == ("batch",) and named.shape == {"batch": 1}
    assert natgrad.parallel is parallel


def test_data_mesh_errors():
    with pytest.raises(ValueError, match="empty"):
        parallel.data_mesh([])
    with pytest.raises(ValueError, match="axis_name"):
        parallel.data_mesh(axis_name="")


def test_shard_batch_and_replicate_place_every_leaf():
    mesh = parallel.data_mesh()
    n = 2 * len(jax.devices())
    batch = {"x": np.arange(3.0 * n).reshape(n, 3), "y": jnp.arange(n)}
    sharded = parallel.shard_batch(batch, mesh)
    for name, leaf in sharded.items():
        assert leaf.sharding == NamedSharding(mesh, P("data"))
        np.testing.assert_array_equal(leaf, batch[name])
    local = parallel.shard_local_batch(batch, mesh)  # one process: the same global batch
    for name, leaf in local.items():
        assert leaf.sharding == NamedSharding(mesh, P("data"))
        np.testing.assert_array_equal(leaf, batch[name])
    state = {"w": jnp.ones((2, 3)), "count": jnp.int32(0), "key": jax.random.key(0)}
    replicated = parallel.replicate(state, mesh)
    for leaf in jax.tree.leaves(replicated):
        assert leaf.sharding == NamedSharding(mesh, P()) and leaf.sharding.is_fully_replicated
    assert (
        jax.random.key_data(replicated["key"]).tolist()
        == jax.random.key_data(state["key"]).tolist()
    )


@pytest.mark.parametrize("fn", [parallel.shard_batch, parallel.shard_local_batch])
def test_sharding_a_scalar_names_the_leaf(fn):
    with pytest.raises(ValueError, match=r"leaf \['step'\] is a scalar"):
        fn({"x": np.zeros((4, 2)), "step": np.float64(1.0)}, parallel.data_mesh())


@pytest.mark.parametrize("fn", [parallel.shard_batch, parallel.shard_local_batch])
def test_an_unknown_axis_name_lists_the_mesh_axes(fn):
    mesh = parallel.data_mesh(axis_name="batch")
    with pytest.raises(ValueError, match=r"axes \('batch',\), not 'data'"):
        fn(np.zeros((4, 2)), mesh)
    assert parallel.shard_batch(np.zeros((4, 2)), mesh, axis_name="batch").sharding.spec == P(
        "batch"
    )
