#!/usr/bin/env bash
# Remove what deploy/install.sh installed: the service, its unit, the venv and the Mosquitto
# drop-in. The database, the config, the secrets, the ACL, the broker password and the system
# user stay unless --purge.
set -euo pipefail

SERVICE=kairo-sidecar
SERVICE_USER=kairo-sidecar
PREFIX=/opt/kairo-sidecar
ETC_DIR=/etc/kairo-sidecar
STATE_DIR=/var/lib/kairo-sidecar
UNIT=/etc/systemd/system/$SERVICE.service
MOSQ_DROPIN=/etc/mosquitto/conf.d/kairo.conf
MOSQ_ACL=/etc/mosquitto/kairo.acl
MOSQ_PASSWD=/etc/mosquitto/passwd

usage() {
    cat <<EOF
Usage: sudo deploy/uninstall.sh [options]

Stop and disable the '$SERVICE' service, then remove $UNIT, the venv $PREFIX and the
Mosquitto drop-in $MOSQ_DROPIN (and restart mosquitto). Kept: the database in $STATE_DIR,
$ETC_DIR (config and secrets), $MOSQ_ACL, the '$SERVICE_USER' entry in $MOSQ_PASSWD and
the system user, so installing again carries on where it stopped.

Options:
  --purge        also delete the database ($STATE_DIR), $ETC_DIR, $MOSQ_ACL, the
                 '$SERVICE_USER' entry in $MOSQ_PASSWD and the system user. The events are gone
                 for good: take a backup first (kairo-sidecar backup DEST).
  --root DIR     remove from a staging directory made by install.sh --root DIR (implies
                 --no-systemd; no user is deleted)
  --no-systemd   do not run systemctl (no stop, no daemon-reload, no broker restart)
  --no-broker    leave Mosquitto's files alone
  -h, --help     this help

Example: sudo deploy/uninstall.sh
         sudo deploy/uninstall.sh --purge
EOF
}

say() { printf 'uninstall: %s\n' "$*"; }
die() { printf 'uninstall: error: %s\n' "$*" >&2; exit 1; }

ROOT=/
SYSTEMD=1
BROKER=1
PURGE=0
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --no-systemd) SYSTEMD=0 ;;
        --no-broker) BROKER=0 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then
    STAGED=0
    R=
    [ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
else
    STAGED=1
    R=$ROOT
    SYSTEMD=0
fi
if [ "$SYSTEMD" = 1 ] && [ ! -d /run/systemd/system ]; then
    die "systemd is not running on this machine: use --no-systemd"
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

remove() {  # remove PATH...: files or directories, saying what went
    local path
    for path in "$@"; do
        if [ -e "$R$path" ] || [ -L "$R$path" ]; then
            rm -rf -- "$R$path"
            say "removed $path"
        fi
    done
}

# --------------------------------------------------------------------------- service
if [ "$SYSTEMD" = 1 ]; then
    if systemctl cat "$SERVICE" >/dev/null 2>&1; then
        say "stopping and disabling $SERVICE"
        systemctl disable --now --quiet "$SERVICE" || say "$SERVICE was not running"
    fi
fi
remove "$UNIT"
[ "$SYSTEMD" = 0 ] || systemctl daemon-reload

# --------------------------------------------------------------------------- venv
if [ -e "$R$PREFIX" ] && [ ! -f "$R$PREFIX/pyvenv.cfg" ]; then
    die "$PREFIX is not a venv (no pyvenv.cfg): not removing it"
fi
remove "$PREFIX"

# --------------------------------------------------------------------------- broker
if [ "$BROKER" = 1 ]; then
    broker_changed=0
    if [ -e "$R$MOSQ_DROPIN" ]; then
        remove "$MOSQ_DROPIN"
        broker_changed=1
    fi
    if [ "$PURGE" = 1 ]; then
        remove "$MOSQ_ACL"
        passwd_file=$R$MOSQ_PASSWD
        if [ -f "$passwd_file" ] && grep -q "^$SERVICE_USER:" "$passwd_file"; then
            # Rewrite in place: the file keeps its owner and mode (and the other users).
            grep -v "^$SERVICE_USER:" "$passwd_file" >"$TMP/passwd" || true
            cat "$TMP/passwd" >"$passwd_file"
            say "removed the broker user $SERVICE_USER from $MOSQ_PASSWD"
        fi
    fi
    if [ "$broker_changed" = 1 ] && [ "$SYSTEMD" = 1 ] && systemctl is-active --quiet mosquitto; then
        systemctl restart mosquitto || die "mosquitto did not restart (journalctl -u mosquitto)"
        say "restarted mosquitto (back to its own settings)"
    fi
fi

# --------------------------------------------------------------------------- data
if [ "$PURGE" = 1 ]; then
    remove "$ETC_DIR" "$STATE_DIR"
    if [ "$STAGED" = 0 ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" && say "deleted the system user $SERVICE_USER"
    fi
else
    for kept in "$STATE_DIR" "$ETC_DIR"; do
        [ ! -e "$R$kept" ] || say "kept $kept (--purge deletes it)"
    done
fi
say "done"
