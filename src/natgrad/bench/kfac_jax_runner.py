"""Train a benchmark classifier with kfac-jax's K-FAC, inside kfac-jax's own environment.

kfac-jax 0.0.8 (its newest release) fails under jax >= 0.9 and runs under jax 0.8.3, so
``natgrad bench kfac`` runs this file as a subprocess with the python of a separate venv
(``benchmarks/make_kfac_jax_env.sh DIR`` makes one)::

    DIR/bin/python kfac_jax_runner.py --input IN.npz --output OUT.json

This module imports only the standard library and numpy at its top, and never natgrad: it can be
imported under natgrad's own jax (for :func:`mlp_apply` and :func:`cnn_apply`, which the tests
compare with natgrad's models) without kfac-jax installed. jax and kfac_jax (which brings optax
and distrax) are imported inside the functions that need them.

Input npz (written by the benchmark):

* ``x_train`` float32 (N, 784) in [0, 1], ``y_train`` int32 (N,), ``x_test`` float32 (M, 784),
  ``y_test`` int32 (M,);
* ``order`` int32 (S, B): the training-example indices of each of the S steps, in order;
* ``eval_steps`` int32 (E,): the step counts after which the test accuracy is evaluated
  (0: before training);
* ``config_json``: a 0-d string array holding JSON ``{"model": "mlp" | "cnn", "seed": int,
  "kfac": {...}}``;
* ``params/0/w``, ``params/0/b``, ``params/1/w``, ... float32: the initial parameters of layer
  0, 1, ...

``config["kfac"]`` may hold:

* ``learning_rate`` (0.3), ``momentum`` (0.9), ``damping`` (1.0): the fixed values handed to
  every ``Optimizer.step``. With ``use_adaptive_learning_rate`` / ``use_adaptive_momentum`` the
  first two are not passed; with ``use_adaptive_damping`` ``damping`` becomes kfac-jax's
  ``initial_damping`` (unless that is given);
* any JSON-valued keyword argument of ``kfac_jax.Optimizer`` listed in :data:`OPTIMIZER_KEYS`,
  e.g. ``l2_reg`` (0.0), ``inverse_update_period`` (5), ``curvature_ema`` (0.95),
  ``curvature_update_period`` (1), ``num_burnin_steps`` (10), ``norm_constraint`` (None),
  ``estimation_mode`` (None: kfac-jax's ``ggn_curvature_prop``), ``use_adaptive_damping``,
  ``use_adaptive_learning_rate``, ``use_adaptive_momentum``, ``initial_damping``,
  ``min_damping``, ``max_damping``, ``damping_adaptation_interval``, ``use_step_rejection``,
  ``use_exact_inverses``, ``num_estimator_samples``, ``precon_power``, ...; the defaults not set
  here are kfac-jax's own;
* kfac-jax's module-level switches (:data:`GLOBAL_KEYS`): ``use_cholesky_inversion`` (kfac-jax:
  False, LU inverses), ``use_4d_convolution_in_psm_loop`` (kfac-jax: True), and
  ``conv_patches_moments``: ``"loop"`` (default: kfac-jax's ``patches_moments``, a loop of
  convolutions that costs seconds per step for the CNN on XLA:CPU) or ``"explicit"`` (its
  ``patches_moments_explicit``, the same moments from extracted patches, ~25x faster there).

Anything else is an error. ``multi_device`` is always False.

The burn-in: kfac-jax's first step first runs ``num_burnin_steps`` curvature-only passes over
batches taken from a data iterator. Here those are the first ``num_burnin_steps`` batches of
``order`` (cycled if there are fewer steps); they do not shift the order of the training steps.
Their cost is part of step 0's time.

Timing: the step is compiled and run once (more often only if adaptive damping or
``curvature_update_period`` > 1 make kfac-jax compile several variants) from a throwaway copy of
the initial state before the clock starts. Then each step alone is timed: ``perf_counter``
around ``Optimizer.step`` and ``jax.block_until_ready`` of the new parameters. Gathering the
batch, moving it to the device and evaluating the test accuracy happen outside the timed region.
kfac-jax refreshes its inverses inside the step on the steps t (0-based) with
``t % inverse_update_period == 0`` (on every step if the period is 1); those are listed in
``inverse_update_steps`` so that per-step times can be split.

Output JSON (strict: NaN becomes null, and an infinite setting such as kfac-jax's default
``max_damping`` the string ``"inf"``)::

    {"kfac_jax_version", "jax_version", "jaxlib_version", "python_version", "model",
     "settings": {effective options}, "step_seconds": [S floats],
     "eval": {"steps", "seconds" (cumulative timed training seconds), "test_accuracy",
              "train_loss" (batch loss of the last step before the evaluation, null at 0)},
     "finite": bool, "registered_layers": [str], "inverse_update_steps": [int],
     "burnin_steps": int, "compile_seconds": float, "init_seconds": float}

If anything fails, ``{"error": "..."}`` is written instead and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

MODELS = ("mlp", "cnn")

#: The runner's own settings, handed to ``Optimizer.step`` (not to the constructor).
STEP_DEFAULTS = {"learning_rate": 0.3, "momentum": 0.9, "damping": 1.0}

#: Constructor values that differ from kfac-jax's defaults or that must be stated.
CONSTRUCTOR_DEFAULTS = {
    "l2_reg": 0.0,
    "use_adaptive_learning_rate": False,
    "use_adaptive_momentum": False,
    "use_adaptive_damping": False,
}

#: kfac-jax's module-level switches that ``config["kfac"]`` may set (None: leave kfac-jax's).
GLOBAL_KEYS = ("use_4d_convolution_in_psm_loop", "use_cholesky_inversion", "conv_patches_moments")

#: The keyword arguments of ``kfac_jax.Optimizer`` that ``config["kfac"]`` may set (JSON values).
OPTIMIZER_KEYS = (
    "l2_reg",
    "regularized_parameters_path_exclusions",
    "use_adaptive_learning_rate",
    "use_adaptive_momentum",
    "use_adaptive_damping",
    "initial_damping",
    "use_initial_damping_calibration",
    "min_damping",
    "max_damping",
    "include_damping_in_quad_change",
    "damping_adaptation_interval",
    "damping_adaptation_decay",
    "damping_lower_threshold",
    "damping_upper_threshold",
    "always_use_exact_qmodel_for_damping_adjustment",
    "precon_damping_mult",
    "use_step_rejection",
    "reject_damping_increase_factor",
    "norm_constraint",
    "num_burnin_steps",
    "estimation_mode",
    "curvature_ema",
    "curvature_update_period",
    "inverse_update_period",
    "use_exact_inverses",
    "register_only_generic",
    "patterns_to_skip",
    "use_automatic_registration",
    "num_estimator_samples",
    "should_vmap_estimator_samples",
    "norm_to_scale_identity_weight_per_block",
    "precon_power",
    "exact_quad_model_matrix_type",
)


# ---------------------------------------------------------------------------------------------
# Models (pure jax; params is a list of {"w", "b"} dicts; logits out)


def mlp_apply(params, x):
    """784-128-10 ReLU MLP: ``relu(x @ w0 + b0) @ w1 + b1``; any number of layers."""
    import jax.numpy as jnp

    h = x
    for layer in params[:-1]:
        h = jnp.maximum(h @ layer["w"] + layer["b"], 0.0)
    return h @ params[-1]["w"] + params[-1]["b"]


def cnn_apply(params, x):
    """Two 5x5 stride-2 SAME ReLU convolutions (1→16→16 channels, NHWC/HWIO), then dense to 10."""
    import jax
    import jax.numpy as jnp

    h = x.reshape(x.shape[0], 28, 28, 1)
    for layer in params[:-1]:
        h = jax.lax.conv_general_dilated(
            h,
            layer["w"],
            window_strides=(2, 2),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = jnp.maximum(h + layer["b"], 0.0)
    h = h.reshape(h.shape[0], -1)
    return h @ params[-1]["w"] + params[-1]["b"]


APPLY = {"mlp": mlp_apply, "cnn": cnn_apply}


def make_loss(apply):
    """``loss(params, batch)``: mean softmax cross-entropy of ``apply``'s logits on
    ``batch = (x, y)`` with integer labels ``y``, registered with kfac-jax."""
    import jax
    import jax.numpy as jnp
    import kfac_jax

    def loss(params, batch):
        x, y = batch
        logits = apply(params, x)
        kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1))

    return loss


# ---------------------------------------------------------------------------------------------
# Input, settings, output helpers


def load_input(path):
    """The npz as ``(data, config, params)``; ``params`` a list of {"w", "b"} float32 arrays."""
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(str(data.pop("config_json")[()]))
    layers = {}
    for key in [k for k in data if k.startswith("params/")]:
        _, i, name = key.split("/")
        layers.setdefault(int(i), {})[name] = np.asarray(data.pop(key), np.float32)
    if sorted(layers) != list(range(len(layers))) or not layers:
        raise ValueError(f"params/i/... keys must number the layers 0..n-1, got {sorted(layers)}")
    params = [layers[i] for i in range(len(layers))]
    for i, layer in enumerate(params):
        if set(layer) != {"w", "b"}:
            raise ValueError(f"layer {i} must have exactly 'w' and 'b', got {sorted(layer)}")
    for key in ("x_train", "y_train", "x_test", "y_test", "order", "eval_steps"):
        if key not in data:
            raise ValueError(f"input npz lacks {key!r}")
    return data, config, params


def resolve_settings(kfac_config):
    """Split ``config["kfac"]`` into (step values, constructor kwargs, effective settings)."""
    import inspect

    import kfac_jax

    kfac_config = dict(kfac_config or {})
    unknown = sorted(set(kfac_config) - set(STEP_DEFAULTS) - set(GLOBAL_KEYS) - set(OPTIMIZER_KEYS))
    if unknown:
        raise ValueError(
            f"unknown kfac options {unknown}; accepted: {sorted(STEP_DEFAULTS)}, "
            f"{sorted(GLOBAL_KEYS)} and {sorted(OPTIMIZER_KEYS)}"
        )
    apply_globals(kfac_config)
    step = {k: kfac_config.get(k, v) for k, v in STEP_DEFAULTS.items()}
    ctor = dict(CONSTRUCTOR_DEFAULTS)
    ctor.update({k: v for k, v in kfac_config.items() if k in OPTIMIZER_KEYS})
    if ctor.get("use_adaptive_damping") and ctor.get("initial_damping") is None:
        ctor["initial_damping"] = step["damping"]
    if "patterns_to_skip" in ctor:
        ctor["patterns_to_skip"] = tuple(ctor["patterns_to_skip"])

    signature = inspect.signature(kfac_jax.Optimizer.__init__).parameters
    settings = {}
    for key in OPTIMIZER_KEYS:
        if key in ctor:
            settings[key] = ctor[key]
        elif key in signature and signature[key].default is not inspect.Parameter.empty:
            settings[key] = signature[key].default
    settings.update(step)
    settings["use_4d_convolution_in_psm_loop"] = (
        kfac_jax.patches_second_moment.get_use_4d_convolution_in_psm_loop()
    )
    settings["use_cholesky_inversion"] = kfac_jax.utils.get_use_cholesky_inversion()
    settings["conv_patches_moments"] = kfac_config.get("conv_patches_moments", "loop")
    if ctor.get("use_adaptive_learning_rate"):
        settings["learning_rate"] = "adaptive"
    if ctor.get("use_adaptive_momentum"):
        settings["momentum"] = "adaptive"
    if ctor.get("use_adaptive_damping"):
        settings["damping"] = "adaptive"
    settings["multi_device"] = False
    return step, ctor, {k: _json_setting(v) for k, v in settings.items()}


def apply_globals(kfac_config):
    """Set kfac-jax's module-level switches named in ``kfac_config`` (before tracing)."""
    import kfac_jax

    value = kfac_config.get("use_4d_convolution_in_psm_loop")
    if value is not None:
        kfac_jax.patches_second_moment.set_use_4d_convolution_in_psm_loop(bool(value))
    value = kfac_config.get("use_cholesky_inversion")
    if value is not None:
        kfac_jax.utils.set_use_cholesky_inversion(bool(value))
    value = kfac_config.get("conv_patches_moments", "loop")
    if value == "explicit":
        # kfac-jax's conv blocks call patches_second_moment.patches_moments, a loop of
        # convolutions that takes seconds per step on XLA:CPU; patches_moments_explicit is
        # kfac-jax's own equivalent that extracts the patches (same result, more memory).
        psm = kfac_jax.patches_second_moment
        psm.patches_moments = psm.patches_moments_explicit
    elif value != "loop":
        raise ValueError(f"conv_patches_moments must be 'loop' or 'explicit', got {value!r}")


def _json_setting(value):
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [_json_setting(v) for v in value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    if number != number:
        return None
    if number in (float("inf"), float("-inf")):
        return str(number)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return number


def _version(distribution, module):
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return getattr(module, "__version__", None)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def describe_layers(optimizer, params):
    """Short descriptions of the layers kfac-jax registered: tag variant, parameters, block."""
    import jax

    try:
        estimator = optimizer._estimator  # no public accessor in kfac-jax 0.0.8
        blocks = estimator.blocks
        layer_indices = estimator.jaxpr.layer_indices
    except Exception as exc:  # pragma: no cover - depends on kfac-jax internals
        return [f"<could not inspect the registration: {exc!r}>"]
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [jax.tree_util.keystr(path) + " " + str(tuple(np.shape(leaf))) for path, leaf in leaves]
    out = []
    for block, indices in zip(blocks, layer_indices, strict=True):
        variant = getattr(block, "_layer_tag_eq", None)
        meta = getattr(variant, "params", {}).get("meta") if variant is not None else None
        tag = getattr(meta, "variant", "?")
        parameters = ", ".join(names[i] for i in indices)
        out.append(f"{tag}: {parameters} -> {type(block).__name__}")
    return out


# ---------------------------------------------------------------------------------------------
# Training


def run(data, config, params0):
    """Train and return the output dict (see the module docstring)."""
    import warnings

    import jax
    import jax.numpy as jnp
    import jaxlib
    import kfac_jax

    model = config.get("model")
    if model not in APPLY:
        raise ValueError(f"config['model'] must be one of {MODELS}, got {model!r}")
    seed = int(config.get("seed", 0))
    step_values, ctor, settings = resolve_settings(config.get("kfac"))

    x_train = np.asarray(data["x_train"], np.float32)
    y_train = np.asarray(data["y_train"], np.int32)
    x_test = jnp.asarray(np.asarray(data["x_test"], np.float32))
    y_test = jnp.asarray(np.asarray(data["y_test"], np.int32))
    order = np.asarray(data["order"], np.int64)
    if order.ndim != 2 or order.shape[0] == 0:
        raise ValueError(f"order must be (S, B) with S > 0, got shape {order.shape}")
    num_steps = order.shape[0]
    eval_steps = sorted({int(s) for s in np.asarray(data["eval_steps"]).ravel()})
    if eval_steps and not 0 <= eval_steps[0] <= eval_steps[-1] <= num_steps:
        raise ValueError(f"eval_steps must lie in [0, {num_steps}], got {eval_steps}")

    # kfac-jax's burn-in donates the batch, which XLA cannot reuse; jax warns on every trace.
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    apply = APPLY[model]
    loss = make_loss(apply)
    optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss),
        multi_device=False,
        **ctor,
    )

    def batch(i):
        idx = order[i % num_steps]
        return jax.device_put((x_train[idx], y_train[idx]))

    @jax.jit
    def num_correct(params, x, y):
        return jnp.sum(jnp.argmax(apply(params, x), axis=-1) == y)

    def accuracy(params, chunk=2000):
        total = 0
        for start in range(0, x_test.shape[0], chunk):
            stop = start + chunk
            total += int(num_correct(params, x_test[start:stop], y_test[start:stop]))
        return total / x_test.shape[0]

    def fresh_params():
        return jax.tree.map(lambda a: jnp.array(a, copy=True), jax.device_put(params0))

    burnin = int(settings.get("num_burnin_steps") or 0)

    def step_kwargs(t):
        # Python floats, not arrays: kfac-jax's burn-in donates its damping argument.
        kwargs = {"global_step_int": t}
        if not ctor.get("use_adaptive_learning_rate"):
            kwargs["learning_rate"] = float(step_values["learning_rate"])
        if not ctor.get("use_adaptive_momentum"):
            kwargs["momentum"] = float(step_values["momentum"])
        if not ctor.get("use_adaptive_damping"):
            kwargs["damping"] = float(step_values["damping"])
        return kwargs

    def data_kwargs(t, b):
        # kfac-jax takes its burn-in batches from a data iterator, on the first step only.
        # Fresh arrays each time: the burn-in donates its batch.
        if t == 0 and burnin > 0:
            batches = jax.block_until_ready([batch(i) for i in range(burnin)] + [b])
            return {"data_iterator": iter(batches)}
        return {"batch": jax.block_until_ready(b)}

    key = jax.random.PRNGKey(seed)
    first = batch(0)

    # Initialization (tracing, layer registration) and compilation, before the clock starts.
    t0 = time.perf_counter()
    warm_params = fresh_params()
    warm_state = optimizer.init(warm_params, jax.random.fold_in(key, 2**30), first)
    jax.block_until_ready(warm_state)
    init_seconds = time.perf_counter() - t0
    registered = describe_layers(optimizer, warm_params)

    # Variants of the compiled step: (t % curvature_update_period == 0, adaptive damping at t).
    period = int(settings.get("curvature_update_period") or 1)
    interval = (
        int(settings.get("damping_adaptation_interval") or 1)
        if ctor.get("use_adaptive_damping")
        else 1
    )
    warm_steps = period * interval // np.gcd(period, interval)
    t0 = time.perf_counter()
    for t in range(warm_steps):
        out = optimizer.step(
            warm_params,
            warm_state,
            jax.random.fold_in(key, 2**30 + 1 + t),
            **data_kwargs(t, first),
            **step_kwargs(t),
        )
        warm_params, warm_state = out[0], out[1]
        jax.block_until_ready(warm_params)
    compile_seconds = time.perf_counter() - t0
    del warm_params, warm_state, out

    params = fresh_params()
    state = optimizer.init(params, jax.random.fold_in(key, 2**30), first)
    jax.block_until_ready(state)

    step_seconds = []
    evals = {"steps": [], "seconds": [], "test_accuracy": [], "train_loss": []}
    last_loss = None
    pending = list(eval_steps)

    def evaluate(t):
        evals["steps"].append(t)
        evals["seconds"].append(float(sum(step_seconds)))
        evals["test_accuracy"].append(_finite_or_none(accuracy(params)))
        evals["train_loss"].append(_finite_or_none(last_loss) if last_loss is not None else None)

    if pending and pending[0] == 0:
        evaluate(0)
        pending.pop(0)
    for t in range(num_steps):
        b = first if t == 0 else batch(t)
        rng = jax.random.fold_in(key, t)
        kwargs = {**data_kwargs(t, b), **step_kwargs(t)}
        jax.block_until_ready(rng)
        start = time.perf_counter()
        params, state, stats = optimizer.step(params, state, rng, **kwargs)[:3]
        jax.block_until_ready(params)
        step_seconds.append(time.perf_counter() - start)
        if pending and pending[0] == t + 1:
            last_loss = stats.get("loss")
            evaluate(t + 1)
            pending.pop(0)

    finite = all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(params))
    inverse_period = int(settings.get("inverse_update_period") or 1)
    inverse_steps = [t for t in range(num_steps) if inverse_period == 1 or t % inverse_period == 0]
    return {
        "kfac_jax_version": _version("kfac-jax", kfac_jax),
        "jax_version": _version("jax", jax),
        "jaxlib_version": _version("jaxlib", jaxlib),
        "python_version": platform.python_version(),
        "model": model,
        "settings": settings,
        "step_seconds": [float(s) for s in step_seconds],
        "eval": evals,
        "finite": finite,
        "registered_layers": registered,
        "inverse_update_steps": inverse_steps,
        "burnin_steps": burnin,
        "compile_seconds": compile_seconds,
        "init_seconds": init_seconds,
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="input npz (see the module docstring)")
    parser.add_argument("--output", required=True, help="output JSON")
    args = parser.parse_args(argv)
    try:
        data, config, params = load_input(args.input)
        result = run(data, config, params)
        write_json(args.output, result)
    except Exception as exc:  # report every failure to the parent benchmark
        message = f"{type(exc).__name__}: {exc}"
        try:
            write_json(args.output, {"error": message})
        finally:
            print(f"kfac_jax_runner: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
