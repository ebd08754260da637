#!/bin/sh
# Install lobbyd as a systemd service, or remove it again. `make install` and
# `make uninstall` run this; each step is also its own make target.
#
# Usage: sh systemd/install.sh venv|units|config|state|system|uninstall
#
# Paths come from the environment, with these defaults. DESTDIR is prepended to
# every path written, so a test or a package build can install into a staging
# directory. The virtual environment works only at the path it was created at,
# so a DESTDIR install is for inspection and tests, not for copying elsewhere.
set -eu

: "${DESTDIR:=}"
: "${PREFIX:=/opt/lobbyd}"
: "${SYSCONFDIR:=/etc/lobbyd}"
: "${UNITDIR:=/etc/systemd/system}"
: "${STATEDIR:=/var/lib/lobbyd}"
: "${SERVICE_USER:=lobbyd}"
: "${PYTHON:=python3}"

SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
VENV="$DESTDIR$PREFIX/venv"
CONFIG="$DESTDIR$SYSCONFDIR/lobbyd.toml"

say() {
    printf 'lobbyd install: %s\n' "$*"
}

# The shipped files name the default paths; rewrite them for the paths chosen here.
render() {
    sed -e "s|/opt/lobbyd|$PREFIX|g" \
        -e "s|/etc/lobbyd|$SYSCONFDIR|g" \
        -e "s|/var/lib/lobbyd|$STATEDIR|g" \
        "$1"
}

# True when this run changes the live system: no DESTDIR, and run as root.
live_system() {
    [ -z "$DESTDIR" ] && [ "$(id -u)" -eq 0 ]
}

# True when systemd is the running init system (sd_booted(3) checks the same path).
systemd_running() {
    [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]
}

install_venv() {
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SRCDIR"
    install -m 0644 "$SRCDIR/README.md" "$DESTDIR$PREFIX/README.md"
    say "installed the package into $VENV"
}

install_units() {
    install -d "$DESTDIR$UNITDIR"
    for unit in lobbyd.service lobbyd.socket; do
        render "$SRCDIR/systemd/$unit" > "$DESTDIR$UNITDIR/$unit"
        chmod 0644 "$DESTDIR$UNITDIR/$unit"
    done
    say "installed lobbyd.service and lobbyd.socket into $DESTDIR$UNITDIR"
}

# An existing configuration is the operator's: it is never overwritten. The new
# default goes beside it as lobbyd.toml.new, to compare by hand.
install_config() {
    install -d -m 0755 "$DESTDIR$SYSCONFDIR"
    target=$CONFIG
    if [ -e "$CONFIG" ]; then
        target="$CONFIG.new"
        say "kept the existing $CONFIG; the shipped default is in $target"
    fi
    render "$SRCDIR/config/lobbyd.toml" > "$target"
    chmod 0640 "$target"
    if live_system && id "$SERVICE_USER" >/dev/null 2>&1; then
        chgrp "$SERVICE_USER" "$target"
    fi
}

install_state() {
    install -d -m 0750 "$DESTDIR$STATEDIR"
}

# Steps that only make sense on the machine itself: the service user, ownership
# and telling systemd about the new units.
install_system() {
    if ! live_system; then
        say "not creating user $SERVICE_USER: DESTDIR is set or not running as root"
        return
    fi
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "lobbyd matchmaking daemon" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    chown "$SERVICE_USER:$SERVICE_USER" "$STATEDIR"
    chgrp "$SERVICE_USER" "$CONFIG"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "next: put a secret of 32 or more random bytes in $SYSCONFDIR/auth_secret"
    say "(chgrp $SERVICE_USER, chmod 0640), set auth_secret_file in $CONFIG, run"
    say "'$PREFIX/venv/bin/lobbyd check-config $CONFIG', then"
    say "'systemctl enable --now lobbyd.socket lobbyd.service'"
}

uninstall() {
    if systemd_running; then
        # Either unit may be stopped or disabled already; that is what we want.
        systemctl disable --now lobbyd.socket lobbyd.service 2>/dev/null || true
    fi
    rm -f "$DESTDIR$UNITDIR/lobbyd.service" "$DESTDIR$UNITDIR/lobbyd.socket"
    if systemd_running; then
        systemctl daemon-reload
    fi

    rm -rf "$VENV"
    rm -f "$DESTDIR$PREFIX/README.md"
    rmdir "$DESTDIR$PREFIX" 2>/dev/null || say "kept $DESTDIR$PREFIX: it contains files this script did not install"

    uninstall_config
    if rmdir "$DESTDIR$STATEDIR" 2>/dev/null; then
        say "removed the empty $DESTDIR$STATEDIR"
    elif [ -d "$DESTDIR$STATEDIR" ]; then
        say "kept $DESTDIR$STATEDIR with the player database; delete it to remove players and matches"
    fi
    if live_system && id "$SERVICE_USER" >/dev/null 2>&1; then
        say "kept user $SERVICE_USER, which may still own files; remove it with 'userdel $SERVICE_USER'"
    fi
}

# The configuration goes only when it is the unchanged default.
uninstall_config() {
    rm -f "$CONFIG.new"
    shipped=$(mktemp)
    render "$SRCDIR/config/lobbyd.toml" > "$shipped"
    if [ -e "$CONFIG" ] && cmp -s "$shipped" "$CONFIG"; then
        rm -f "$CONFIG"
    elif [ -e "$CONFIG" ]; then
        say "kept $CONFIG: it differs from the shipped default"
    fi
    rm -f "$shipped"
    rmdir "$DESTDIR$SYSCONFDIR" 2>/dev/null || say "kept $DESTDIR$SYSCONFDIR: it is not empty"
}

case "${1:-}" in
    venv) install_venv ;;
    units) install_units ;;
    config) install_config ;;
    state) install_state ;;
    system) install_system ;;
    uninstall) uninstall ;;
    *)
        echo "usage: sh systemd/install.sh venv|units|config|state|system|uninstall" >&2
        exit 2
        ;;
esac
