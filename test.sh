#!/usr/bin/env bash
# Run the whole pyrust test suite in a private virtual environment (.venv).
# Extra arguments go to pytest, e.g. ./test.sh -k server -x
#
# The suite runs a real systemd user manager and builds systemd-python, so it
# needs Debian's systemd, libsystemd-dev and pkg-config: installed here when
# missing and running as root (as in CI); otherwise those tests skip, or fail
# under CI=true.
set -euo pipefail
cd "$(dirname "$0")"

debs="systemd libsystemd-dev pkg-config"
missing=$(for deb in $debs; do dpkg -s "$deb" >/dev/null 2>&1 || echo "$deb"; done)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing $(echo $missing)"
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
fi

# Resolve a real interpreter once: a pyenv shim costs ~50 ms per call.
python=$("${PYRUST_PYTHON:-python3}" -c 'import sys; print(sys.executable)')
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip_install() {
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install '.[test,systemd]' || pip_install '.[test]'
exec .venv/bin/python -m pytest "$@"
