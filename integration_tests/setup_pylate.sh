#!/usr/bin/env bash
# Create the virtualenv holding PyLate for integration_tests/test_pylate_parity.py.
# Usage: bash integration_tests/setup_pylate.sh [VENV_DIR]   (default: integration_tests/.pylate/.venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.pylate/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pylate" 2>/dev/null; then
    "$python" -m venv "$venv"
    # (pip's notes about this machine's local index mirrors are noise: filtered out)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements-pylate.txt" 2>&1 | { grep -v '^WARNING: Location' || true; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        pylate==1.6.0 2>&1 | { grep -v '^WARNING: Location' || true; }
fi
"$venv/bin/python" -c "import pylate, sentence_transformers, transformers, torch; from pylate import models, rank, scores; print('pylate', pylate.__version__, 'sentence-transformers', sentence_transformers.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
echo "RERANK_PYLATE_VENV=$venv"
