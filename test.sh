#!/usr/bin/env bash
# Run the whole pyrust test suite in a private virtual environment (.venv).
# Extra arguments go to pytest, e.g. ./test.sh -k server -x
set -euo pipefail
cd "$(dirname "$0")"

# Resolve a real interpreter once: a pyenv shim costs ~50 ms per call.
python=$("${PYRUST_PYTHON:-python3}" -c 'import sys; print(sys.executable)')
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
exec .venv/bin/python -m pytest "$@"
