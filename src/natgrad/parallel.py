"""Data parallelism on a :class:`jax.sharding.Mesh`: shard the batch, replicate the rest, jit.

natgrad's optimizers are plain ``jax.numpy`` code without collectives of their own. Put the
parameters and the optimizer state on every device (:func:`replicate`), split the batch's
leading axis over the mesh's data axis (:func:`shard_batch`), and ``jax.jit`` the training step:
XLA's GSPMD partitioner runs each of the D devices on its B/D rows and inserts the all-reduces
wherever the step reduces over the batch — the loss and its gradient, every curvature product C·v
of :func:`natgrad.hessian_free`'s conjugate gradients and the losses of its line search, an
ELBO's sum over the data. The sharded step is the single-device step up to the order of those
sums (``tests/test_data_parallel.py`` checks three steps of each optimizer on four devices,
float64, to rtol 1e-10, and that the compiled step contains all-reduces)::

    mesh = natgrad.parallel.data_mesh()  # all devices, one axis "data"
    params, state = natgrad.parallel.replicate((params, state), mesh)  # P(): a copy each
    batch = natgrad.parallel.shard_batch((x, y), mesh)  # P("data"): B/D rows each
    params, state = jax.jit(step)(params, state, batch)  # outputs come back replicated

On one CPU, emulate D devices by setting ``XLA_FLAGS=--xla_force_host_platform_device_count=D``
before JAX starts.

Several processes (hosts): call ``jax.distributed.initialize()`` in every process before anything
else, build the mesh over the global ``jax.devices()`` (``data_mesh()`` does), replicate the same
params in every process, and let each process pass only its own rows to
:func:`shard_local_batch`; the global batch is the processes' parts concatenated in process order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

__all__ = ["data_mesh", "replicate", "shard_batch", "shard_local_batch"]


def data_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = "data") -> Mesh:
    """A one-axis mesh for data parallelism.

    Args:
      devices: the devices, in order (default ``jax.devices()``: every device of every
        process).
      axis_name: the name of the mesh axis the batch is split over.

    Returns:
      ``Mesh(devices, (axis_name,))`` with ``mesh.shape[axis_name] == len(devices)``.

    Example::

        mesh = natgrad.parallel.data_mesh()           # mesh.axis_names == ("data",)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: `devices` is empty; pass at least one device")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"data_mesh: axis_name must be a non-empty string, got {axis_name!r}")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _axis_size(mesh: Mesh, axis_name: str, caller: str) -> int:
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{caller}: the mesh has axes {mesh.axis_names}, not {axis_name!r}; pass "
            f"axis_name= one of them (data_mesh(axis_name=...) names its axis)"
        )
    return int(mesh.shape[axis_name])


def _leading_axis(path, leaf, caller: str) -> int:
    shape = np.shape(leaf)
    if not shape:
        raise ValueError(
            f"{caller}: leaf {jax.tree_util.keystr(path) or '(root)'} is a scalar; every leaf of "
            "a batch needs a leading batch axis to split (replicate() scalars instead)"
        )
    return shape[0]


def _check_divisible(path, leaf, size: int, num: int, what: str, caller: str) -> None:
    if size % num:
        raise ValueError(
            f"{caller}: leaf {jax.tree_util.keystr(path) or '(root)'} has shape {np.shape(leaf)}; "
            f"its leading axis {size} does not split evenly over the {num} {what}. Use a batch "
            f"size that is a multiple of {num} (drop or pad the last rows)"
        )


def shard_batch(tree: PyTree, mesh: Mesh, *, axis_name: str = "data") -> PyTree:
    """Place every leaf with its leading axis split over the mesh axis ``axis_name``.

    A leaf of shape (B, ...) gets ``NamedSharding(mesh, P(axis_name))``: device d of the D
    devices along the axis holds rows [d·B/D, (d+1)·B/D) (other mesh axes hold copies).

    Args:
      tree: a pytree of arrays with a common leading batch axis B (numpy or jax), the *global*
        batch. With several processes every process must pass the same global values; to pass
        only this process's rows use :func:`shard_local_batch`.
      mesh: the mesh, e.g. from :func:`data_mesh`.
      axis_name: the mesh axis to split over.

    Returns:
      The same pytree of global :class:`jax.Array` s, sharded.

    Raises:
      ValueError: a leaf is a scalar, B is not divisible by D (the message names the leaf, its
        shape and D), or ``axis_name`` is not an axis of ``mesh``.
    """
    num = _axis_size(mesh, axis_name, "shard_batch")
    sharding = NamedSharding(mesh, P(axis_name))

    def place(path, leaf):
        size = _leading_axis(path, leaf, "shard_batch")
        what = f"devices of mesh axis {axis_name!r}"
        _check_divisible(path, leaf, size, num, what, "shard_batch")
        return jax.device_put(leaf, sharding)

    return jax.tree_util.tree_map_with_path(place, tree)


def _local_shards(mesh: Mesh, axis_name: str) -> int:
    """How many positions along ``axis_name`` hold a device of this process."""
    axis = mesh.axis_names.index(axis_name)
    devices = np.moveaxis(mesh.devices, axis, 0).reshape(mesh.shape[axis_name], -1)
    me = jax.process_index()
    return sum(any(d.process_index == me for d in row) for row in devices)


def shard_local_batch(tree: PyTree, mesh: Mesh, *, axis_name: str = "data") -> PyTree:
    """The global batch, sharded like :func:`shard_batch`, from this process's rows only.

    With P processes each holding ``B_local`` rows of every leaf, the result has leading axis
    B = P·B_local (the parts in process order, when each process owns a contiguous block of
    the mesh axis as in :func:`data_mesh`), built by
    :func:`jax.make_array_from_process_local_data` without moving data between hosts. With one
    process it equals :func:`shard_batch`.

    Args:
      tree: a pytree of this process's arrays, leading axis ``B_local``.
      mesh: the global mesh (over all processes' devices), e.g. from :func:`data_mesh`.
      axis_name: the mesh axis to split over.

    Returns:
      A pytree of global :class:`jax.Array` s with ``NamedSharding(mesh, P(axis_name))``.

    Raises:
      ValueError: a leaf is a scalar, ``B_local`` is not divisible by this process's number
        of devices along the axis, or ``axis_name`` is not an axis of ``mesh``.
    """
    _axis_size(mesh, axis_name, "shard_local_batch")
    num_local = _local_shards(mesh, axis_name)
    if num_local == 0:
        raise ValueError(
            f"shard_local_batch: process {jax.process_index()} has no device on mesh axis "
            f"{axis_name!r}; build the mesh over the global jax.devices()"
        )
    sharding = NamedSharding(mesh, P(axis_name))

    def place(path, leaf):
        size = _leading_axis(path, leaf, "shard_local_batch")
        what = f"devices this process has on mesh axis {axis_name!r}"
        _check_divisible(path, leaf, size, num_local, what, "shard_local_batch")
        local = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        return jax.make_array_from_process_local_data(sharding, local)

    return jax.tree_util.tree_map_with_path(place, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf whole on every device of ``mesh`` (``NamedSharding(mesh, P())``).

    For parameters and optimizer state (PRNG keys included). With several processes every
    process must pass the same values.
    """
    return jax.device_put(tree, NamedSharding(mesh, P()))
