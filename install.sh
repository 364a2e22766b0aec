#!/usr/bin/env bash
# Install pyrust for the current user and start its service.
#
#   ./install.sh              install, or upgrade and restart
#   ./install.sh --uninstall  remove everything it created
#
# Where a service manager runs, the OS owns the socket: systemd user units on
# Linux, a launchd agent on macOS. Elsewhere a standalone background server.
# Honours HOME and the XDG variables. PYRUST_PYTHON picks the interpreter,
# PYRUST_BIN_DIR where the `pyrust` command is linked.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}/pyrust
venv=$data/venv
unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user
label=io.pyrust.agent
plist=$HOME/Library/LaunchAgents/$label.plist
log_dir=${XDG_STATE_HOME:-$HOME/.local/state}/pyrust

say() { echo "pyrust: $*"; }
on_path() { case ":$PATH:" in *":$1:"*) return 0 ;; esac; return 1; }

pick_bin_dir() {
    if [ -n "${PYRUST_BIN_DIR:-}" ]; then echo "$PYRUST_BIN_DIR"; return; fi
    if on_path "$HOME/.local/bin"; then echo "$HOME/.local/bin"; return; fi
    if on_path /usr/local/bin && [ -w /usr/local/bin ]; then echo /usr/local/bin; return; fi
    echo "$HOME/.local/bin"
}

# Which service manager will own the socket: launchd, systemd or none.
pick_manager() {
    if [ "$(uname -s)" = Darwin ]; then echo launchd
    elif command -v systemctl >/dev/null && systemctl --user show-environment >/dev/null 2>&1; then
        echo systemd
    else echo none
    fi
}

# Stop the standalone server on the socket, whichever installation started
# it, and wait for it to go: requests in flight finish (a graceful stop).
stop_standalone() {
    local i
    [ -x "$data/pyrust" ] || return 0
    "$data/pyrust" --daemon-status >/dev/null 2>&1 || return 0
    "$data/pyrust" --stop-daemon >/dev/null 2>&1 || true
    for i in $(seq 1 400); do
        "$data/pyrust" --daemon-status >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    echo "pyrust: the running server did not stop within 40 s" >&2
    return 1
}

quiet_pip() {
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

install_venv() {
    local python
    # A real interpreter, not a shim: the venv is built from what this resolves to.
    python=$("${PYRUST_PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 9), "pyrust needs Python 3.9 or newer"; print(sys.executable)')
    mkdir -p "$data"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # The systemd extra builds only where libsystemd's headers exist; without
    # it pyrust speaks the notify protocol itself.
    quiet_pip "$here[systemd]" 2>/dev/null || quiet_pip "$here"
    # A regular (not editable) install, always of this checkout's code.
    quiet_pip --force-reinstall --no-deps "$here"
}

# The `pyrust` command ($data/pyrust): the native client (client/pyrust.c, built
# with the system's C compiler into the venv) where it builds, else the Python
# client's launcher, which the native client hands off to what it does not do
# itself. Sets `client` to what the command is.
build_client() {
    local status=0
    "$venv/bin/python" -I -m pyrust.native --source "$here/client" \
        --out "$venv/bin/pyrust-native" --launcher "$data/pyrust-python" \
        --python "$venv/bin/python" >/dev/null 2>"$data/native-build.log" || status=$?
    [ -s "$data/native-build.log" ] || rm -f "$data/native-build.log"  # kept: warnings, errors
    if [ $status = 0 ]; then
        client="native ($venv/bin/pyrust-native)"
        ln -sfn "$venv/bin/pyrust-native" "$data/pyrust"
        return
    fi
    client="Python ($data/pyrust-python)"
    rm -f "$venv/bin/pyrust-native"  # an earlier build: not left beside the new code
    ln -sfn "$data/pyrust-python" "$data/pyrust"
    if [ $status = 3 ]; then
        say "no C compiler (cc, or \$CC): the pyrust command is the Python client"
    else
        say "building the native client failed ($data/native-build.log): the pyrust command is the Python client"
    fi
}

start_systemd() {
    "$venv/bin/python" -m pyrust.units systemd --templates "$here/packaging" \
        --out "$unit_dir" --python "$venv/bin/python" >/dev/null
    systemctl --user daemon-reload
    systemctl --user enable --now pyrust.socket >/dev/null 2>&1
    systemctl --user try-restart pyrust.service  # an upgrade must not leave old code serving
}

start_launchd() {
    local socket_dir
    socket_dir=$(getconf DARWIN_USER_TEMP_DIR)
    mkdir -p "$(dirname "$plist")" "$log_dir"
    "$venv/bin/python" -m pyrust.units launchd --templates "$here/packaging" \
        --out "$(dirname "$plist")" --python "$venv/bin/python" \
        --socket "${socket_dir%/}/pyrust.sock" --log "$log_dir/pyrust.log" >/dev/null
    launchctl bootout "gui/$(id -u)/$label" 2>/dev/null || true
    launchctl bootstrap "gui/$(id -u)" "$plist"
}

uninstall() {
    local manager=$1 bin_dir=$2
    if [ "$manager" = systemd ]; then
        systemctl --user disable --now pyrust.socket pyrust.service >/dev/null 2>&1 || true
        rm -f "$unit_dir/pyrust.socket" "$unit_dir/pyrust.service"
        systemctl --user daemon-reload
    elif [ "$manager" = launchd ]; then
        launchctl bootout "gui/$(id -u)/$label" 2>/dev/null || true
        rm -f "$plist"
    else
        stop_standalone
    fi
    # The socket's directory (systemd keeps it after removing the socket; a
    # standalone server leaves its lock file there).
    local run_dir=${TMPDIR:-/tmp}/pyrust-$(id -u)
    if [ -n "${XDG_RUNTIME_DIR:-}" ]; then run_dir=$XDG_RUNTIME_DIR/pyrust; fi
    rm -f "$run_dir/pyrust.sock.lock"
    rmdir "$run_dir" 2>/dev/null || true
    if [ "$(readlink "$bin_dir/pyrust" 2>/dev/null)" = "$data/pyrust" ]; then
        rm -f "$bin_dir/pyrust"
    fi
    rm -rf "$data" "$log_dir"
    say "uninstalled (removed $data, $log_dir and $bin_dir/pyrust)"
}

main() {
    local manager bin_dir result client
    manager=$(pick_manager)
    bin_dir=$(pick_bin_dir)
    if [ "${1:-}" = "--uninstall" ]; then
        uninstall "$manager" "$bin_dir"
        return
    fi
    install_venv
    build_client
    mkdir -p "$bin_dir"
    ln -sf "$data/pyrust" "$bin_dir/pyrust"
    case $manager in
        systemd) start_systemd ;;
        launchd) start_launchd ;;
        none)
            say "no user service manager is running; starting a standalone background server"
            stop_standalone  # an upgrade must not leave old code serving
            "$data/pyrust" --daemon >/dev/null ;;
    esac
    result=$("$data/pyrust" -c "2+3")
    if [ "$result" != 5 ]; then
        echo "pyrust: self-check failed: 'pyrust -c \"2+3\"' printed '$result'" >&2
        exit 1
    fi
    say "installed; self-check 'pyrust -c \"2+3\"' printed 5"
    echo "  command:  $bin_dir/pyrust"
    echo "  client:   $client"
    echo "  venv:     $venv"
    case $manager in
        systemd) echo "  units:    $unit_dir/pyrust.socket, $unit_dir/pyrust.service"
                 echo "  status:   systemctl --user status pyrust.socket pyrust.service"
                 echo "  log:      journalctl --user -u pyrust.service" ;;
        launchd) echo "  agent:    $plist"
                 echo "  log:      $log_dir/pyrust.log" ;;
        none)    echo "  log:      $log_dir/pyrust.log" ;;
    esac
    on_path "$bin_dir" || echo "  note:     $bin_dir is not on your PATH; add it: export PATH=\"$bin_dir:\$PATH\""
}

main "$@"
