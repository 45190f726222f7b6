#!/usr/bin/env bash
# Create the virtualenv holding the Infinity rerank server for integration_tests/.
# Usage: bash integration_tests/setup_infinity.sh [VENV_DIR]   (default: integration_tests/.venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/infinity_emb" ]; then
    "$python" -m venv "$venv"
    # (pip's notes about this machine's local index mirrors are noise: filtered out)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-infinity.txt" 2>&1 | { grep -v '^WARNING: Location' || true; }
fi
"$venv/bin/python" -c "import infinity_emb, transformers, numpy; print('infinity_emb', infinity_emb.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)"
echo "RERANK_INFINITY_VENV=$venv"
