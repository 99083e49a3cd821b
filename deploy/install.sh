#!/usr/bin/env bash
# Install (or upgrade) kairo-sidecar from this checkout as a systemd service on Raspberry Pi OS /
# Debian: the steps of README "Install on a Raspberry Pi". Safe to run again: an existing config,
# secrets file, Mosquitto drop-in and ACL are kept; the venv and the unit are refreshed.
set -euo pipefail
umask 022  # the venv and the config must be readable by the service user

# The paths below are the ones deploy/kairo-sidecar.service names; the script checks they match.
SERVICE=kairo-sidecar
SERVICE_USER=kairo-sidecar
PREFIX=/opt/kairo-sidecar
ETC_DIR=/etc/kairo-sidecar
CONFIG=$ETC_DIR/sidecar.toml
SECRETS=$ETC_DIR/secrets.env
STATE_DIR=/var/lib/kairo-sidecar
DB_URL=sqlite:///$STATE_DIR/kairo.db
UNIT=/etc/systemd/system/$SERVICE.service
MOSQ_DROPIN=/etc/mosquitto/conf.d/kairo.conf
MOSQ_ACL=/etc/mosquitto/kairo.acl
MOSQ_PASSWD=/etc/mosquitto/passwd
START_TIMEOUT=120

usage() {
    cat <<EOF
Usage: sudo deploy/install.sh [options]

Install kairo-sidecar from this checkout as the systemd service '$SERVICE':
  - the packages it needs (python3-venv, mosquitto, mosquitto-clients) if missing (apt-get)
  - the system user '$SERVICE_USER'
  - a venv in $PREFIX (pip install -c constraints.txt . when constraints.txt exists)
  - $CONFIG from config/sidecar.toml, database $DB_URL (an existing config is kept)
  - $STATE_DIR (the database directory, owned by $SERVICE_USER)
  - the Mosquitto drop-in $MOSQ_DROPIN and ACL $MOSQ_ACL (kept when present), a broker
    password for '$SERVICE_USER' in $MOSQ_PASSWD and in $SECRETS (root only), a broker restart
  - the unit $UNIT, then a first-run check (config, migrate, check --quick as '$SERVICE_USER')
    and the service enabled and started; the script waits until systemd reports it active.
Running it again upgrades the venv and restarts the service; nothing you edited is overwritten.

Options:
  --root DIR     install into the staging directory DIR instead of / (like DESTDIR; for
                 tests). Implies --no-systemd and --no-apt; no user is created, no file is
                 chowned, and the first-run check uses the database under DIR. The venv
                 works where it is, not when DIR is moved.
  --no-systemd   install the unit file but do not run systemctl (no start, no broker restart)
  --no-broker    leave Mosquitto alone (the broker is elsewhere or set up by hand)
  --no-apt       never run apt-get; stop with the list of missing packages instead
  --python PY    the Python (>= 3.11) that creates the venv (default: the newest found)
  --start-timeout SECONDS
                 how long to wait for the service to become active (default: $START_TIMEOUT)
  -h, --help     this help

Example: sudo deploy/install.sh
         deploy/install.sh --root /tmp/stage --no-systemd --no-broker
Undo with deploy/uninstall.sh (keeps the database and config unless --purge).
EOF
}

say() { printf 'install: %s\n' "$*"; }
warn() { printf 'install: warning: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

ROOT=/
SYSTEMD=1
BROKER=1
APT=1
PYTHON=
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --no-systemd) SYSTEMD=0 ;;
        --no-broker) BROKER=0 ;;
        --no-apt) APT=0 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#--python=} ;;
        --start-timeout) [ $# -ge 2 ] || die "--start-timeout needs seconds"; START_TIMEOUT=$2; shift ;;
        --start-timeout=*) START_TIMEOUT=${1#--start-timeout=} ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
case $START_TIMEOUT in
    ''|*[!0-9]*) die "--start-timeout takes whole seconds, not '$START_TIMEOUT'" ;;
esac

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/deploy/kairo-sidecar.service" ]; then
    die "run the script from a kairo-sidecar checkout ($SRC has no pyproject.toml)"
fi

mkdir -p "$ROOT" 2>/dev/null || true
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then
    STAGED=0
    R=
else
    STAGED=1
    R=$ROOT
    SYSTEMD=0
    APT=0
fi
# Files owned by the service user and `setpriv` to it: only on the real system, as root.
if [ "$STAGED" = 0 ] && [ "$(id -u)" = 0 ]; then OWN=1; else OWN=0; fi
[ "$STAGED" = 1 ] || [ "$OWN" = 1 ] || die "run as root (sudo $0), or with --root DIR to stage"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --------------------------------------------------------------------------- checks
unit_has() { grep -qF -- "$1" "$SRC/deploy/kairo-sidecar.service"; }
if ! { unit_has "ExecStart=$PREFIX/bin/kairo-sidecar run --config $CONFIG" &&
        unit_has "EnvironmentFile=-$SECRETS" && unit_has "User=$SERVICE_USER" &&
        unit_has "StateDirectory=${STATE_DIR#/var/lib/}"; }; then
    die "deploy/kairo-sidecar.service no longer names $PREFIX, $CONFIG, $SECRETS, $SERVICE_USER, $STATE_DIR: update this script"
fi
if [ "$SYSTEMD" = 1 ] && [ ! -d /run/systemd/system ]; then
    die "systemd is not running on this machine: use --no-systemd (and start the daemon yourself)"
fi

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
find_python() {
    local py
    for py in ${PYTHON:-python3.13 python3.12 python3.11 python3}; do
        if command -v "$py" >/dev/null 2>&1 && python_ok "$py"; then
            command -v "$py"; return 0
        fi
    done
    return 1
}

missing=()
find_python >/dev/null || missing+=(python3-venv)
if [ "$BROKER" = 1 ]; then
    { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || missing+=(mosquitto)
    command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
    command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
fi
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$APT" = 1 ] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed (try: sudo apt-get update first)"
    else
        die "missing: ${missing[*]} (Debian / Raspberry Pi OS: sudo apt-get install ${missing[*]}; Python must be >= 3.11)"
    fi
fi
PY=$(find_python) || die "no Python >= 3.11 with the venv module (sudo apt-get install python3-venv)"

# --------------------------------------------------------------------------- user
if [ "$OWN" = 1 ]; then
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "system user $SERVICE_USER exists"
    else
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
        say "created the system user $SERVICE_USER"
    fi
else
    say "staging into $ROOT: no system user, files stay owned by $(id -un)"
fi

# --------------------------------------------------------------------------- venv
VENV=$R$PREFIX
if [ -e "$VENV" ] && ! python_ok "$VENV/bin/python"; then
    say "$PREFIX holds no usable venv: recreating it"
    "$PY" -m venv --clear "$VENV" || die "creating the venv in $VENV failed"
elif [ ! -e "$VENV" ]; then
    say "creating the venv $PREFIX ($("$PY" -V 2>&1))"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || die "creating the venv in $VENV failed (sudo apt-get install python3-venv)"
fi
# Build from a copy, so the checkout gets no root-owned build/ or egg-info directories.
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./data \
    --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=./bench/results \
    --exclude='*cache*' --exclude='*.db' -cf - . | { mkdir "$TMP/src" && tar -C "$TMP/src" -xf -; }
pip_args=(--quiet --disable-pip-version-check --no-input)
if [ -f "$SRC/constraints.txt" ]; then
    pip_args+=(-c "$TMP/src/constraints.txt")
    say "installing kairo-sidecar into $PREFIX (pinned by constraints.txt)"
else
    say "installing kairo-sidecar into $PREFIX (no constraints.txt: newest allowed versions)"
fi
# One wheel, installed with its dependencies, then again over itself: the same version number
# may carry new code, and pip would skip it.
if ! { "$VENV/bin/python" -m pip wheel "${pip_args[@]}" --no-deps -w "$TMP/wheel" "$TMP/src" &&
        "$VENV/bin/python" -m pip install "${pip_args[@]}" "$TMP"/wheel/*.whl &&
        "$VENV/bin/python" -m pip install "${pip_args[@]}" --force-reinstall --no-deps "$TMP"/wheel/*.whl
      } >"$TMP/pip.log" 2>&1; then
    tail -n 20 "$TMP/pip.log" >&2
    die "pip could not install kairo-sidecar into $VENV (its output is above)"
fi
BIN=$VENV/bin/kairo-sidecar
say "installed $("$BIN" --version)"

# --------------------------------------------------------------------------- config
# Sets KEY = VALUE in [SECTION] of a TOML file read on stdin (an active KEY line there is dropped).
toml_set() {
    awk -v section="$1" -v key="$2" -v value="$3" '
        function emit() { print key " = " value "   # set by deploy/install.sh"; done = 1 }
        /^[[:space:]]*\[/ {
            here = ($0 ~ "^[[:space:]]*\\[" section "\\][[:space:]]*(#.*)?$")
            print
            if (here) emit()
            next
        }
        here && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { next }
        { print }
        END { if (!done) { print ""; print "[" section "]"; emit() } }'
}
install -d -m 0755 "$R$ETC_DIR"
if [ -e "$R$CONFIG" ]; then
    say "keeping the existing $CONFIG"
else
    {
        echo "# Installed by deploy/install.sh from config/sidecar.toml (never overwritten by it)."
        toml_set database url "\"$DB_URL\"" <"$SRC/config/sidecar.toml"
    } >"$TMP/sidecar.toml"
    install -m 0644 "$TMP/sidecar.toml" "$R$CONFIG"
    say "wrote $CONFIG (database $DB_URL)"
fi
if [ "$OWN" = 1 ]; then
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$R$STATE_DIR"
else
    install -d -m 0750 "$R$STATE_DIR"
fi

# --------------------------------------------------------------------------- broker
# Sets NAME=VALUE in the secrets file (root only, 0600), keeping its other lines.
secret_set() {
    local file=$R$SECRETS
    { if [ -f "$file" ]; then grep -v "^$1=" "$file" || true; fi; echo "$1=$2"; } >"$TMP/secrets.env"
    install -m 0600 "$TMP/secrets.env" "$file"
}
secret_get() { if [ -f "$R$SECRETS" ]; then sed -n "s/^$1=//p" "$R$SECRETS" | tail -n 1; fi; }

install_kept() {  # install_kept SRC DEST MODE: a config the operator may edit is never replaced
    if [ ! -e "$R$2" ]; then
        install -D -m "$3" "$1" "$R$2"
        say "installed $2"
        BROKER_CHANGED=1
    elif cmp -s "$1" "$R$2"; then
        say "$2 is up to date"
    else
        say "keeping your $2 (it differs from deploy/$(basename "$1"): diff them after an upgrade)"
    fi
}

BROKER_CHANGED=0
if [ "$BROKER" = 1 ]; then
    install_kept "$SRC/deploy/mosquitto.conf" "$MOSQ_DROPIN" 0644
    install_kept "$SRC/deploy/mosquitto.acl" "$MOSQ_ACL" 0644
    # The drop-in sets allow_anonymous false: the sidecar logs in as $SERVICE_USER.
    password=$(secret_get KAIRO_SIDECAR_MQTT__PASSWORD)
    passwd_file=$R$MOSQ_PASSWD
    if [ -z "$password" ] || ! grep -q "^$SERVICE_USER:" "$passwd_file" 2>/dev/null; then
        [ -n "$password" ] || password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
        # Hashed from a private file (-U), so the password never shows on a command line.
        printf '%s:%s\n' "$SERVICE_USER" "$password" >"$TMP/pw"
        mosquitto_passwd -U "$TMP/pw" >/dev/null || die "mosquitto_passwd could not hash the password"
        { if [ -f "$passwd_file" ]; then grep -v "^$SERVICE_USER:" "$passwd_file" || true; fi
          cat "$TMP/pw"; } >"$TMP/passwd"
        install -D -m 0640 "$TMP/passwd" "$passwd_file"
        if [ "$OWN" = 1 ] && getent group mosquitto >/dev/null; then chown root:mosquitto "$passwd_file"; fi
        secret_set KAIRO_SIDECAR_MQTT__USERNAME "$SERVICE_USER"
        secret_set KAIRO_SIDECAR_MQTT__PASSWORD "$password"
        say "broker user $SERVICE_USER: password in $MOSQ_PASSWD (hashed) and $SECRETS"
        BROKER_CHANGED=1
    else
        say "broker user $SERVICE_USER already has its password ($SECRETS)"
    fi
    if [ "$BROKER_CHANGED" = 1 ] && [ "$SYSTEMD" = 1 ]; then
        say "restarting mosquitto"
        systemctl restart mosquitto || {
            journalctl -u mosquitto -n 20 --no-pager -o cat >&2 || true
            die "mosquitto did not restart with the new settings (its log is above)"
        }
    elif [ "$BROKER_CHANGED" = 1 ]; then
        say "restart mosquitto to apply its new settings (systemctl restart mosquitto)"
    fi
    say "add device and application users with: mosquitto_passwd $MOSQ_PASSWD <user> (see $MOSQ_ACL)"
fi

# --------------------------------------------------------------------------- unit
install -D -m 0644 "$SRC/deploy/kairo-sidecar.service" "$R$UNIT"
say "installed $UNIT"

# --------------------------------------------------------------------------- first-run check
as_service_user() {
    if [ "$OWN" = 1 ]; then
        setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}
was_active=0
if [ "$SYSTEMD" = 1 ] && systemctl is-active --quiet "$SERVICE"; then
    was_active=1
    say "stopping $SERVICE for the upgrade (the broker keeps new events until it is back)"
    systemctl stop "$SERVICE"
fi
(
    cd /
    # shellcheck disable=SC1090  # the secrets file written above (or by the operator)
    if [ -f "$R$SECRETS" ]; then set -a; . "$R$SECRETS"; set +a; fi
    # A staged install checks its own database, not the machine's.
    if [ "$STAGED" = 1 ]; then export KAIRO_SIDECAR_DATABASE__URL="sqlite:///$R$STATE_DIR/kairo.db"; fi
    export KAIRO_SIDECAR_LOG__LEVEL=warning
    as_service_user "$BIN" config --config "$R$CONFIG" >/dev/null ||
        die "$CONFIG is not valid (the message above names the key)"
    say "checked $CONFIG"
    as_service_user "$BIN" migrate --config "$R$CONFIG" | sed 's/^/install: migrate: /' ||
        die "migrating the database failed (message above)"
    as_service_user "$BIN" check --quick --config "$R$CONFIG" >/dev/null ||
        die "the database check failed (message above; README \"Start-up checks and recovery\")"
    say "checked the database"
)

# --------------------------------------------------------------------------- service
if [ "$SYSTEMD" = 1 ]; then
    systemctl daemon-reload
    systemctl enable --quiet "$SERVICE"
    say "starting $SERVICE (it reports ready once its database is open and it is subscribed)"
    systemctl start --no-block "$SERVICE"
    deadline=$((SECONDS + START_TIMEOUT))
    until systemctl is-active --quiet "$SERVICE"; do
        if systemctl is-failed --quiet "$SERVICE" || [ $SECONDS -ge $deadline ]; then
            journalctl -u "$SERVICE" -n 30 --no-pager -o cat >&2 || true
            die "$SERVICE did not become active within ${START_TIMEOUT}s (its log is above; systemctl status $SERVICE)"
        fi
        sleep 1
    done
    say "$SERVICE is $([ "$was_active" = 1 ] && echo "running again" || echo running): systemctl status $SERVICE; journalctl -u $SERVICE -f -o cat"
else
    say "--no-systemd: start it with: systemctl daemon-reload && systemctl enable --now $SERVICE"
fi
say "done"
