"""The README's quickstart code runs as written, and its test command is the one CI runs."""

import pathlib
import re

import jax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs_and_converges(capsys):
    namespace: dict = {}
    blocks = _python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    import numpy as np

    # After 30 steps the mean is the exact posterior mean of the conjugate model:
    # (I + XᵀX/σ²)⁻¹ Xᵀy/σ², σ² = 0.1; tolerance 1e-8 covers conditioning (cond < 1e3).
    x, y = np.asarray(namespace["x"]), np.asarray(namespace["y"])
    precision = np.eye(3) + x.T @ x / 0.1
    exact_mean = np.linalg.solve(precision, x.T @ y / 0.1)
    mean, _ = namespace["params"]
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-8)
    assert "tx" in namespace
    # The neural-network block: 50 Hessian-free steps on 256 points fit the quadrant labels,
    # and the dense Fisher agrees with its products (float64 rounding).
    assert float(namespace["net_accuracy"]) > 0.95
    # The GP block: 200 hybrid steps fit sin(x) well (noise sd 0.2; RMSE against the truth).
    gp_mean = np.asarray(namespace["gp_mean"])[:, 0]
    truth = np.sin(np.asarray(namespace["gp_x"])[:, 0])
    assert np.sqrt(np.mean((gp_mean - truth) ** 2)) < 0.1
    assert namespace["gp_result"].num_rejected == 0
    fisher, matrix = namespace["fisher"], np.asarray(namespace["fisher_matrix"])
    assert matrix.shape == (2 * 16 + 16 + 16 * 2 + 2,) * 2
    flat, unravel = ravel_pytree(fisher.params)
    v = np.random.default_rng(0).standard_normal(flat.size)
    np.testing.assert_allclose(
        ravel_pytree(fisher.mv(unravel(v)))[0], matrix @ v, rtol=1e-10, atol=1e-12
    )


def test_readme_has_exactly_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    assert "natgrad demo" in commands[0]
    assert "pytest" in commands[1]
    assert "<!-- test-command -->" in setup
