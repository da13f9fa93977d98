"""Find the dense and convolution layers of a model function, and run it with taps on them.

K-FAC needs, for every layer s = W·a (+ b), the layer's inputs a and the gradients of the loss
with respect to its pre-activations s. :func:`find_layers` reads them off the model's jaxpr
(:func:`jax.make_jaxpr`, so no registration by the user and no private JAX internals):

* a **dense layer** is a ``dot_general`` with one contracting axis and no batch axes whose one
  operand is a parameter leaf of rank 2 (``x @ W`` in flax and plain functions, ``W @ x`` under
  ``vmap`` in equinox) and whose other operand does not depend on the parameters directly;
* a **convolution** is a ``conv_general_dilated`` (no lhs dilation, one feature group) whose
  kernel is a parameter leaf;
* a **bias** is a parameter leaf with one non-unit axis of the layer's output size added by an
  ``add`` to the layer's output, possibly after relayouts (transpose, unit-axis reshape,
  dtype conversion) of either side — flax's ``Dense``/``Conv``, equinox's ``Linear``/``Conv2d``
  and ``x @ W + b`` all match.

A leaf is a layer's weight (or bias) only if that layer is its one use; any other parameter
(a weight used twice, a scale, an embedding table, a parameter inside a ``scan``) is left to the
caller's fallback (:class:`ModelGraph.other_leaves`). Calls to ``jit``-ed functions inside the
model are looked into; other higher-order primitives (``scan``, ``custom_vjp``, ...) are opaque.

:meth:`ModelGraph.evaluate` runs the model equation by equation with, for layer l, its input
a_l recorded and a perturbation ε_l (zeros of the shape of s_l) added to its output, so that
∂loss/∂ε_l = ∂loss/∂s_l comes out of one :func:`jax.vjp`. Equations other than layers run as
one-equation jaxprs (:func:`jax.extend.core.jaxpr_as_fun`), which keeps custom derivative rules.
All of this happens while tracing: the compiled computation is the model plus the taps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

PyTree = Any

#: Primitives that change an array's dtype or copy it: a parameter seen through them is
#: still the parameter.
_CONVERSIONS = frozenset({"convert_element_type", "copy", "copy_p"})
#: Reshapes that only insert or remove unit axes (checked on the shapes).
_UNIT_RESHAPES = frozenset({"reshape", "squeeze", "expand_dims"})
#: Call primitives whose body is inlined when it holds layers.
_CALLS = frozenset({"pjit", "jit", "closed_call"})


@dataclasses.dataclass(frozen=True)
class Layer:
    """One dense or convolution layer found in a model's jaxpr.

    The layer computes s = W·a over "rows" r (examples, and positions for convolutions or
    dense layers applied along extra axes): s_r = Wᵀ a_r (+ b) with W seen as the matrix
    ``(in_features, out_features)`` of :meth:`weight_matrix`.

    Attributes:
      kind: "dense" or "conv".
      weight: index of W among ``jax.tree.leaves(params)``.
      bias: index of b, or None.
      in_features: d_in (for convolutions C_in · kernel size: the patch length).
      out_features: d_out.
      weight_in_axis: dense: the axis of W contracted with the input.
      input_axis: dense: the input's feature axis.
      output_axis: the feature axis of the layer's output s.
      conv: convolutions: the primitive's parameters (strides, padding, dilations, dimension
        numbers) as a dict; None for dense layers.
      weight_shape: the shape of W.
      weight_operand: which operand of the primitive is W (0 or 1; the other is a).
    """

    kind: str
    weight: int
    bias: int | None
    in_features: int
    out_features: int
    weight_in_axis: int
    input_axis: int
    output_axis: int
    weight_shape: tuple[int, ...]
    weight_operand: int = 1
    conv: Any = None

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    def _conv_kernel_order(self) -> tuple[int, ...]:
        """Kernel axes as (in, spatial..., out): the order of a patch's entries."""
        rhs_spec = self.conv["dimension_numbers"].rhs_spec
        return (rhs_spec[1], *rhs_spec[2:], rhs_spec[0])

    def weight_matrix(self, w: jax.Array) -> jax.Array:
        """W as the (in_features, out_features) matrix with s_r = Wᵀ a_r."""
        if self.kind == "dense":
            return w if self.weight_in_axis == 0 else w.T
        return jnp.transpose(w, self._conv_kernel_order()).reshape(
            self.in_features, self.out_features
        )

    def matrix_to_weight(self, m: jax.Array) -> jax.Array:
        """The inverse of :meth:`weight_matrix`: an (in, out) matrix back in W's layout."""
        if self.kind == "dense":
            return m if self.weight_in_axis == 0 else m.T
        order = self._conv_kernel_order()
        shaped = m.reshape(tuple(self.weight_shape[a] for a in order))
        return jnp.transpose(shaped, tuple(order.index(a) for a in range(len(order))))

    def input_rows(self, a: jax.Array) -> jax.Array:
        """The layer's input as rows a_r: (R, in_features)."""
        if self.kind == "conv":
            c = self.conv
            rhs_spec = c["dimension_numbers"].rhs_spec
            patches = jax.lax.conv_general_dilated_patches(
                a,
                tuple(self.weight_shape[d] for d in rhs_spec[2:]),
                c["window_strides"],
                c["padding"],
                rhs_dilation=c["rhs_dilation"],
                dimension_numbers=c["dimension_numbers"],
                precision=jax.lax.Precision.HIGHEST,
            )
            return jnp.moveaxis(patches, self.output_axis, -1).reshape(-1, self.in_features)
        return jnp.moveaxis(a, self.input_axis, -1).reshape(-1, self.in_features)

    def output_rows(self, s: jax.Array) -> jax.Array:
        """An array shaped like the layer's output s as rows: (R, out_features)."""
        return jnp.moveaxis(s, self.output_axis, -1).reshape(-1, self.out_features)


@dataclasses.dataclass(frozen=True)
class _Info:
    """What the discovery pass knows about one jaxpr variable."""

    leaf: int | None = None  # a parameter leaf seen through conversions
    leaf_axis: int | None = None  # bias candidates: the axis carrying the leaf's values
    transposed: bool = False  # a rank-2 leaf seen through a transpose
    layer: int | None = None  # output of layer `layer` (through relayouts)
    layer_axis: int | None = None


def _nonunit(shape: Sequence[int]) -> list[int]:
    return [i for i, n in enumerate(shape) if n != 1]


def _map_axis_through_unit_reshape(
    in_shape: Sequence[int], out_shape: Sequence[int], axis: int | None
) -> int | None:
    """Where ``axis`` goes under a reshape that only adds or drops unit axes (else None)."""
    if axis is None or in_shape[axis] == 1:
        return None
    src, dst = _nonunit(in_shape), _nonunit(out_shape)
    if [in_shape[i] for i in src] != [out_shape[i] for i in dst]:
        return None
    return dst[src.index(axis)]


@dataclasses.dataclass
class _Discovery:
    """Mutable bookkeeping of one discovery pass (never leaves :func:`find_layers`)."""

    num_leaves: int
    layers: list[Layer] = dataclasses.field(default_factory=list)
    layer_eqns: dict[int, int] = dataclasses.field(default_factory=dict)  # id(eqn) -> layer
    uses: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # leaf -> [id(eqn)]
    bias_of: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # layer ->
    #                                                                 (bias leaf, id(add eqn))
    calls_with_layers: set[int] = dataclasses.field(default_factory=set)


def _aval_shape(v: Any) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _dense_layer(eqn, infos) -> Layer | None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb or len(lc) != 1 or len(rc) != 1:
        return None
    lhs, rhs = (infos.get(v, _Info()) for v in eqn.invars)
    for w_pos, (w_info, x_info) in enumerate(((lhs, rhs), (rhs, lhs))):
        if w_info.leaf is None or x_info.leaf is not None:
            continue
        w_var, x_var = eqn.invars[w_pos], eqn.invars[1 - w_pos]
        w_shape, x_shape = _aval_shape(w_var), _aval_shape(x_var)
        if len(w_shape) != 2:
            continue
        w_axis = (lc, rc)[w_pos][0]
        x_axis = (lc, rc)[1 - w_pos][0]
        # The axis of the leaf itself (W.T is contracted on the leaf's other axis).
        leaf_in_axis = 1 - w_axis if w_info.transposed else w_axis
        out_rank = len(x_shape) - 1 + 1
        # dot_general's output axes: lhs free axes, then rhs free axes.
        output_axis = 0 if w_pos == 0 else out_rank - 1
        return Layer(
            kind="dense",
            weight=w_info.leaf,
            bias=None,
            in_features=w_shape[w_axis],
            out_features=w_shape[1 - w_axis],
            weight_in_axis=leaf_in_axis,
            input_axis=x_axis,
            output_axis=output_axis,
            weight_shape=w_shape[::-1] if w_info.transposed else w_shape,
            weight_operand=w_pos,
        )
    return None


def _conv_layer(eqn, infos) -> Layer | None:
    p = eqn.params
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return None
    if any(dil != 1 for dil in p["lhs_dilation"]):
        return None
    x_info, w_info = (infos.get(v, _Info()) for v in eqn.invars)
    if w_info.leaf is None or w_info.transposed or x_info.leaf is not None:
        return None
    dn = p["dimension_numbers"]
    w_shape = _aval_shape(eqn.invars[1])
    kernel_size = math.prod(w_shape[a] for a in dn.rhs_spec[2:])
    return Layer(
        kind="conv",
        weight=w_info.leaf,
        bias=None,
        in_features=w_shape[dn.rhs_spec[1]] * kernel_size,
        out_features=w_shape[dn.rhs_spec[0]],
        weight_in_axis=dn.rhs_spec[1],
        input_axis=dn.lhs_spec[1],
        output_axis=dn.out_spec[1],
        weight_shape=w_shape,
        conv={
            "window_strides": tuple(p["window_strides"]),
            "padding": tuple(tuple(pad) for pad in p["padding"]),
            "rhs_dilation": tuple(p["rhs_dilation"]),
            "dimension_numbers": dn,
        },
    )


def _count_uses(jaxpr) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                counts[v] = counts.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var):
            counts[v] = counts.get(v, 0) + 1
    return counts


def _discover(jaxpr, in_infos: Sequence[_Info], d: _Discovery) -> list[_Info]:
    """One pass over ``jaxpr``; returns the infos of its outputs."""
    infos: dict[Any, _Info] = {
        v: i for v, i in zip(jaxpr.invars, in_infos, strict=True) if i != _Info()
    }
    counts = _count_uses(jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [infos.get(v, _Info()) if isinstance(v, jcore.Var) else _Info() for v in eqn.invars]
        if name in _CALLS and isinstance(eqn.params.get("jaxpr"), jcore.ClosedJaxpr):
            before = len(d.layers)
            outs = _discover(eqn.params["jaxpr"].jaxpr, ins, d)
            if len(d.layers) > before:
                d.calls_with_layers.add(id(eqn))
            infos.update({v: i for v, i in zip(eqn.outvars, outs, strict=True) if i != _Info()})
            continue
        # Every other consumer of a parameter is a use of it (the relayouts below that keep
        # track of it, the layers and adds record theirs).
        tracked = _CONVERSIONS | _UNIT_RESHAPES | {"broadcast_in_dim", "add", "transpose"}
        if name not in tracked | {"dot_general", "conv_general_dilated"}:
            for i in ins:
                if i.leaf is not None:
                    d.uses.setdefault(i.leaf, []).append(id(eqn))
        out_shape = _aval_shape(eqn.outvars[0]) if eqn.outvars else ()
        if name in _CONVERSIONS and len(eqn.invars) == 1:
            infos[eqn.outvars[0]] = ins[0]
        elif name in _UNIT_RESHAPES and ins[0] != _Info():
            in_shape = _aval_shape(eqn.invars[0])
            i = ins[0]
            leaf_axis = (
                _map_axis_through_unit_reshape(in_shape, out_shape, i.leaf_axis)
                if i.leaf is not None
                else None
            )
            if i.leaf is not None and leaf_axis is None:
                d.uses.setdefault(i.leaf, []).append(id(eqn))
            layer_axis = (
                _map_axis_through_unit_reshape(in_shape, out_shape, i.layer_axis)
                if counts.get(eqn.invars[0], 0) == 1
                else None
            )
            infos[eqn.outvars[0]] = _Info(
                leaf=i.leaf if leaf_axis is not None else None,
                leaf_axis=leaf_axis,
                layer=i.layer if layer_axis is not None else None,
                layer_axis=layer_axis,
            )
        elif name == "transpose" and ins[0].leaf is not None:
            if len(out_shape) == 2 and ins[0].leaf_axis is None:
                infos[eqn.outvars[0]] = _Info(leaf=ins[0].leaf, transposed=not ins[0].transposed)
            else:
                d.uses.setdefault(ins[0].leaf, []).append(id(eqn))
        elif name == "transpose" and ins[0].layer is not None:
            if counts.get(eqn.invars[0], 0) == 1:
                perm = tuple(eqn.params["permutation"])
                infos[eqn.outvars[0]] = _Info(
                    layer=ins[0].layer, layer_axis=perm.index(ins[0].layer_axis)
                )
        elif name == "broadcast_in_dim" and ins[0].leaf is not None:
            i = ins[0]
            if i.leaf_axis is None:
                d.uses.setdefault(i.leaf, []).append(id(eqn))
            else:
                axis = eqn.params["broadcast_dimensions"][i.leaf_axis]
                infos[eqn.outvars[0]] = _Info(leaf=i.leaf, leaf_axis=int(axis))
        elif name == "add":
            _match_bias(eqn, ins, counts, d)
        elif name in ("dot_general", "conv_general_dilated"):
            layer = _dense_layer(eqn, infos) if name == "dot_general" else _conv_layer(eqn, infos)
            if layer is not None:
                _add_layer(eqn, layer, d, infos)
            else:
                for i in ins:
                    if i.leaf is not None:
                        d.uses.setdefault(i.leaf, []).append(id(eqn))
    return [infos.get(v, _Info()) if isinstance(v, jcore.Var) else _Info() for v in jaxpr.outvars]


def _add_layer(eqn, layer: Layer, d: _Discovery, infos: dict) -> None:
    index = len(d.layers)
    d.layers.append(layer)
    d.layer_eqns[id(eqn)] = index
    d.uses.setdefault(layer.weight, []).append(id(eqn))
    infos[eqn.outvars[0]] = _Info(layer=index, layer_axis=layer.output_axis)


def _match_bias(eqn, ins: Sequence[_Info], counts, d: _Discovery) -> None:
    """Record ``add(layer output, bias)`` (either order); any other add uses its leaves."""
    for j, (s_info, b_info) in enumerate(((ins[0], ins[1]), (ins[1], ins[0]))):
        if s_info.layer is None or b_info.leaf is None or b_info.leaf_axis is None:
            continue
        s_var, b_var = eqn.invars[j], eqn.invars[1 - j]
        s_shape, b_shape = _aval_shape(s_var), _aval_shape(b_var)
        layer = d.layers[s_info.layer]
        if (
            counts.get(s_var, 0) == 1
            and len(b_shape) == len(s_shape)
            and b_info.leaf_axis == s_info.layer_axis
            and b_shape[b_info.leaf_axis] == layer.out_features
            and all(b_shape[a] == 1 for a in range(len(b_shape)) if a != b_info.leaf_axis)
            and s_info.layer not in d.bias_of
        ):
            d.bias_of[s_info.layer] = (b_info.leaf, id(eqn))
            d.uses.setdefault(b_info.leaf, []).append(id(eqn))
            return
    for i in ins:
        if i.leaf is not None:
            d.uses.setdefault(i.leaf, []).append(id(eqn))


@dataclasses.dataclass(frozen=True)
class ModelGraph:
    """A model's jaxpr with its layers: see the module docstring.

    Attributes:
      layers: the layers found, in the order of the forward pass.
      other_leaves: indices of the parameter leaves that belong to no layer.
      num_leaves: the number of parameter leaves.
    """

    layers: tuple[Layer, ...]
    other_leaves: tuple[int, ...]
    num_leaves: int
    _closed: Any
    _layer_eqns: dict
    _calls_with_layers: frozenset
    _out_tree: Any

    def perturbation_shapes(self) -> list[jax.ShapeDtypeStruct]:
        """The shapes of the layers' outputs s_l (and of their perturbations ε_l)."""
        return list(self._output_avals)

    @property
    def _output_avals(self) -> list[jax.ShapeDtypeStruct]:
        shapes: list[Any] = [None] * len(self.layers)

        def visit(jaxpr):
            for eqn in jaxpr.eqns:
                if id(eqn) in self._layer_eqns:
                    aval = eqn.outvars[0].aval
                    shapes[self._layer_eqns[id(eqn)]] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
                elif id(eqn) in self._calls_with_layers:
                    visit(eqn.params["jaxpr"].jaxpr)

        visit(self._closed.jaxpr)
        return shapes

    def evaluate(
        self, params: PyTree, inputs: PyTree, perturbations: Sequence[jax.Array]
    ) -> tuple[PyTree, list[jax.Array]]:
        """Run the model with ε_l added to each layer's output s_l.

        Returns:
          ``(outputs, layer_inputs)``: the model's outputs (the pytree ``apply`` returns) and,
          for each layer, its input a_l as the layer received it.
        """
        args = jax.tree.leaves((params, inputs))
        recorded: list[Any] = [None] * len(self.layers)
        outs = self._run(self._closed.jaxpr, self._closed.consts, args, perturbations, recorded)
        return jax.tree.unflatten(self._out_tree, outs), recorded

    def _run(self, jaxpr, consts, args, perturbations, recorded) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            if id(eqn) in self._layer_eqns:
                index = self._layer_eqns[id(eqn)]
                layer = self.layers[index]
                recorded[index] = invals[1 - layer.weight_operand]
                (s,) = _eval_eqn(eqn, invals)
                outvals = [s + perturbations[index]]
            elif id(eqn) in self._calls_with_layers:
                inner = eqn.params["jaxpr"]
                outvals = self._run(inner.jaxpr, inner.consts, invals, perturbations, recorded)
            else:
                outvals = _eval_eqn(eqn, invals)
            for v, val in zip(eqn.outvars, outvals, strict=True):
                if isinstance(v, jcore.Var) and not isinstance(v, jcore.DropVar):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars]


def _eval_eqn(eqn, invals: Sequence[Any]) -> list[Any]:
    """Evaluate one equation by running it as a one-equation jaxpr (custom rules kept)."""
    seen: dict[Any, Any] = {}
    for v, val in zip(eqn.invars, invals, strict=True):
        if isinstance(v, jcore.Var) and v not in seen:
            seen[v] = val
    outvars = [v for v in eqn.outvars if not isinstance(v, jcore.DropVar)]
    debug = jcore.DebugInfo(
        "natgrad.kronecker",
        eqn.primitive.name,
        tuple(f"x{i}" for i in range(len(seen))),
        tuple(f"y{i}" for i in range(len(outvars))),
    )
    jaxpr = jcore.Jaxpr(
        constvars=(),
        invars=list(seen),
        outvars=outvars,
        eqns=[eqn],
        effects=eqn.effects,
        debug_info=debug,
    )
    values = iter(jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr, ()))(*seen.values()))
    return [None if isinstance(v, jcore.DropVar) else next(values) for v in eqn.outvars]


def find_layers(apply: Callable[[PyTree, PyTree], PyTree], params: PyTree, inputs: PyTree):
    """Trace ``apply(params, inputs)`` and find its dense and convolution layers.

    Args:
      apply: the model, ``apply(params, inputs) -> outputs``.
      params: a pytree of arrays (or :class:`jax.ShapeDtypeStruct`); its leaves are numbered in
        the order of ``jax.tree.leaves(params)``.
      inputs: a batch of inputs (arrays or shape structs).

    Returns:
      A :class:`ModelGraph`.
    """
    closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(params, inputs)
    num_leaves = len(jax.tree.leaves(params))
    d = _Discovery(num_leaves=num_leaves)
    num_args = len(closed.jaxpr.invars)
    in_infos = [_Info(leaf=i, leaf_axis=None) for i in range(num_leaves)]
    in_infos += [_Info()] * (num_args - num_leaves)
    # A bias candidate carries its values along its one non-unit axis.
    for i, v in enumerate(closed.jaxpr.invars[:num_leaves]):
        axes = _nonunit(_aval_shape(v))
        if len(axes) == 1:
            in_infos[i] = _Info(leaf=i, leaf_axis=axes[0])
    _discover(closed.jaxpr, in_infos, d)

    # Keep a layer only if its weight has no other use; a bias only if the add is its only use.
    kept: list[Layer] = []
    kept_eqns: dict[int, int] = {}
    eqn_of_layer = {index: eqn_id for eqn_id, index in d.layer_eqns.items()}
    for index, layer in enumerate(d.layers):
        if d.uses.get(layer.weight, []) != [eqn_of_layer[index]]:
            continue
        bias = d.bias_of.get(index)
        if bias is not None and d.uses.get(bias[0], []) == [bias[1]]:
            layer = dataclasses.replace(layer, bias=bias[0])
        kept_eqns[eqn_of_layer[index]] = len(kept)
        kept.append(layer)
    in_layers = {leaf for layer in kept for leaf in (layer.weight, layer.bias) if leaf is not None}
    other = tuple(i for i in range(num_leaves) if i not in in_layers)
    calls = frozenset(d.calls_with_layers) if kept else frozenset()
    return ModelGraph(
        layers=tuple(kept),
        other_leaves=other,
        num_leaves=num_leaves,
        _closed=closed,
        _layer_eqns=kept_eqns,
        _calls_with_layers=calls,
        _out_tree=jax.tree.structure(out_shape),
    )
