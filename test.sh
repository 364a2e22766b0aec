#!/usr/bin/env bash
# Run the whole pyrust test suite in a private virtual environment (.venv).
# Extra arguments go to pytest, e.g. ./test.sh -k server -x
#
# Before the tests, the static checks: ruff (pycodestyle, pyflakes, isort,
# bugbear) and mypy on pyrust/ and bench/, configured in pyproject.toml; any
# finding fails the script before a test runs.
#
# The suite runs a real systemd user manager and builds systemd-python, so it
# needs Debian's systemd, libsystemd-dev and pkg-config, and it builds the
# native client (client/pyrust.c), so gcc and libc6-dev: installed here when
# missing and running as root (as in CI); otherwise those tests skip, or fail
# under CI=true.
set -euo pipefail
cd "$(dirname "$0")"

# --fast (first argument only): the edit-test loop.  It skips the slow tiers
# (pytest markers, see pyproject.toml) and runs the rest as one pytest per CPU
# (at most 4), each on its share of the tests (tests/shards.py).
fast=0
if [ "${1:-}" = --fast ]; then
    shift
    fast=1
fi

debs="systemd libsystemd-dev pkg-config gcc libc6-dev"
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
# Installed once per change of pyproject.toml: the install is editable, so the
# code itself needs none (and pip takes seconds to find nothing to do).
stamp=.venv/.pyrust-installed
if [ ! -e $stamp ] || [ pyproject.toml -nt $stamp ]; then
    pip_install '.[test,systemd]' || pip_install '.[test]'
    touch $stamp
fi

static_checks() {  # ruff, then mypy: print the findings and fail on any
    local output
    if ! output=$(.venv/bin/ruff check pyrust bench 2>&1); then
        printf '%s\n' "$output"
        echo "test.sh: ruff found problems in pyrust/ or bench/ (see above)" >&2
        return 1
    fi
    if ! output=$(.venv/bin/mypy 2>&1); then
        printf '%s\n' "$output"
        echo "test.sh: mypy found type errors in pyrust/ or bench/ (see above)" >&2
        return 1
    fi
}
static_checks

# The native client, warnings as errors, and a sanitized build of it (address
# and undefined behaviour) for the differential table; both hand off to the
# launcher .venv/bin/pyrust-python.  Without a compiler the native tests skip.
build_native() {  # OUT [native.py flags...]: 0 built, 3 no compiler, 1 failed
    local out=$1 status=0
    shift
    # Up to date: newer than its sources and the Python modules its header comes from.
    if [ -x "$out" ] && [ -z "$(find client pyrust -newer "$out" \( -name '*.[ch]' -o -name '*.py' \) | head -1)" ]; then
        return 0
    fi
    .venv/bin/python -m pyrust.native --out "$out" --launcher "$PWD/.venv/bin/pyrust-python" \
        --python "$PWD/.venv/bin/python" --strict "$@" >/dev/null 2>.venv/native-build.log || status=$?
    return $status
}
status=0
build_native "$PWD/.venv/bin/pyrust-native" || status=$?
if [ $status = 0 ]; then
    export PYRUST_TEST_NATIVE=$PWD/.venv/bin/pyrust-native
    if build_native "$PWD/.venv/bin/pyrust-native-sanitized" --sanitize; then
        export PYRUST_TEST_NATIVE_SANITIZED=$PWD/.venv/bin/pyrust-native-sanitized
    else  # the tests build it again and fail with the compiler's output
        echo "test.sh: building the sanitized native client failed (.venv/native-build.log)"
    fi
elif [ $status = 3 ]; then
    echo "test.sh: no C compiler (cc, or \$CC): the native client's tests skip"
else
    echo "test.sh: building the native client failed (.venv/native-build.log)"
fi
if [ $fast = 1 ]; then
    shards=$(nproc 2>/dev/null || echo 2)
    [ "$shards" -gt 4 ] && shards=4
    exec .venv/bin/python tests/shards.py "$shards" \
        -m "not (soak or fuzz or systemd or bench or differential)" "$@"
fi
exec .venv/bin/python -m pytest "$@"
