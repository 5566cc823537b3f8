#!/usr/bin/env bash
# Install congrad and its test tools into the current Python environment.
#
# torch is installed first and only if missing: a bare `torch` requirement would pull a
# multi-GB CUDA build on a machine without one. CPU default: torch==2.13.0. GPU users
# install the torch build for their CUDA first (or set CONGRAD_TORCH, e.g.
# CONGRAD_TORCH="torch==2.11.0 --index-url <your CUDA wheel index>"); this script then
# leaves it alone.
#
# CONGRAD_CONSTRAINTS=constraints/ci.txt pins every other package to the versions the suite
# last passed with (constraints/floor.txt: the oldest transformers we claim).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: using installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    # shellcheck disable=SC2086  # CONGRAD_TORCH may carry pip options
    "$PYTHON" -m pip install --quiet ${CONGRAD_TORCH:-torch==2.13.0}
fi
constraints=()
if [ -n "${CONGRAD_CONSTRAINTS:-}" ]; then
    constraints=(--constraint "$CONGRAD_CONSTRAINTS")
fi
"$PYTHON" -m pip install --quiet -e ".[test]" "${constraints[@]}"
echo "setup: congrad $("$PYTHON" -c 'import congrad; print(congrad.__version__)') installed"
