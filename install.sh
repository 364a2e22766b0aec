#!/usr/bin/env bash
# Install pyrust for the current user and start its service.
#
#   ./install.sh            install (or upgrade) and start
#   ./install.sh --uninstall
#
# Honours HOME and the XDG variables; PYRUST_PYTHON picks the interpreter,
# PYRUST_BIN_DIR where the `pyrust` command is linked.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}/pyrust
venv=$data/venv

on_path() { case ":$PATH:" in *":$1:"*) return 0 ;; esac; return 1; }

pick_bin_dir() {
    if [ -n "${PYRUST_BIN_DIR:-}" ]; then echo "$PYRUST_BIN_DIR"; return; fi
    if on_path "$HOME/.local/bin"; then echo "$HOME/.local/bin"; return; fi
    if on_path /usr/local/bin && [ -w /usr/local/bin ]; then echo /usr/local/bin; return; fi
    echo "$HOME/.local/bin"
}
bin_dir=$(pick_bin_dir)

# Stop the background server this installation started, if one runs, and wait
# for it: in-flight requests finish (SIGTERM is a graceful stop).
stop_server() {
    local pids i
    pids=$(pgrep -f "^$venv/bin/python[0-9.]* -m pyrust serve" || true)
    [ -n "$pids" ] || return 0
    kill $pids 2>/dev/null || true
    for i in $(seq 1 350); do
        kill -0 $pids 2>/dev/null || return 0
        sleep 0.1
    done
    echo "pyrust: server $pids did not stop within 35 s" >&2
    return 1
}

if [ "${1:-}" = "--uninstall" ]; then
    stop_server
    [ "$(readlink "$bin_dir/pyrust" 2>/dev/null)" = "$venv/bin/pyrust" ] && rm -f "$bin_dir/pyrust"
    rm -rf "$data"
    echo "pyrust: uninstalled (removed $data and $bin_dir/pyrust)"
    exit 0
fi

# A real interpreter, not a shim: the venv is built from whatever this resolves to.
python=$("${PYRUST_PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 9), "pyrust needs Python 3.9 or newer"; print(sys.executable)')

mkdir -p "$data" "$bin_dir"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# A regular (not editable) install: an editable finder costs every start-up.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall "$here" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
ln -sf "$venv/bin/pyrust" "$bin_dir/pyrust"

stop_server  # an upgrade must not leave the old code serving
"$venv/bin/pyrust" --daemon
result=$("$venv/bin/pyrust" -c "2+3")
if [ "$result" != 5 ]; then
    echo "pyrust: self-check failed: 'pyrust -c \"2+3\"' printed '$result'" >&2
    exit 1
fi
echo "pyrust: installed; self-check 'pyrust -c \"2+3\"' printed 5"
echo "  command: $bin_dir/pyrust"
echo "  venv:    $venv"
on_path "$bin_dir" || echo "  note: $bin_dir is not on your PATH; add it, e.g. export PATH=\"$bin_dir:\$PATH\""
