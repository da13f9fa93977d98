#!/usr/bin/env bash
# Make a venv at DIR in which kfac-jax runs, for `natgrad bench kfac`'s kfac_jax_runner.py, and
# print its python. Usage: benchmarks/make_kfac_jax_env.sh DIR   (PYTHON=python3.11 to choose)
#
# kfac-jax 0.0.8, the newest release, breaks under jax >= 0.9; it runs under jax 0.8.3. With only
# jax/jaxlib/kfac-jax pinned, pip picks the versions below (all work); they are pinned too so that
# later releases, which may need a newer jax without saying so, cannot slip in.
set -euo pipefail
dir=${1:?usage: $0 DIR}
"${PYTHON:-python3}" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
    "jax==0.8.3" "jaxlib==0.8.3" \
    "kfac-jax==0.0.8" \
    "optax==0.2.8" \
    "chex==0.1.92" \
    "distrax==0.1.9" \
    "tfp-nightly==0.26.0.dev20261027" \
    "numpy==2.4.6"
# jax/jaxlib 0.8.3: the newest jax that kfac-jax 0.0.8 runs on.
# optax, chex, distrax: kfac-jax (distrax via its loss functions) imports them; their releases
#   track jax, so keep the ones that import and run with jax 0.8.3.
# tfp-nightly: distrax 0.1.9 requires it with no version bound; a nightly has no jax bound either.
# numpy 2.4.6: the newest numpy that jax 0.8.3 was tested with here.
"$dir/bin/python" -c "import kfac_jax, jax; assert jax.__version__ == '0.8.3', jax.__version__" >&2
echo "$dir/bin/python"
