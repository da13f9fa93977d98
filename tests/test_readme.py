"""The README's quickstart code runs as written, and its test command is the one CI runs."""

import pathlib
import re

import jax

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


def test_readme_has_exactly_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    assert "natgrad demo" in commands[0]
    assert "pytest" in commands[1]
    assert "<!-- test-command -->" in setup
