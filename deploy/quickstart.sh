#!/usr/bin/env bash
# Set up and run kairo-sidecar on its defaults: a venv in .venv, the database in ./data/kairo.db,
# the broker on 127.0.0.1:1883 (a local mosquitto is started there if nothing listens).
# Extra arguments go to `kairo-sidecar run`, e.g. --config config/sidecar.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
           "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "kairo-sidecar needs Python >= 3.11 (Debian/Raspberry Pi OS: sudo apt-get install python3 python3-venv)" >&2
    return 1
}

port_open() {  # port_open HOST PORT
    "$PY" - "$1" "$2" <<'PYEOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PYEOF
}

PY=$(find_python)
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || { echo "creating the venv failed: sudo apt-get install python3-venv" >&2; exit 1; }
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt .

HOST=${KAIRO_SIDECAR_MQTT__HOST:-127.0.0.1}
PORT=${KAIRO_SIDECAR_MQTT__PORT:-1883}
if ! port_open "$HOST" "$PORT"; then
    MOSQUITTO=$(command -v mosquitto || true)
    [ -n "$MOSQUITTO" ] || { [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto; } || true
    if [ -z "$MOSQUITTO" ]; then
        cat >&2 <<MSG
No MQTT broker listens on $HOST:$PORT and the mosquitto binary is not installed.
Install it (Debian / Raspberry Pi OS):   sudo apt-get install mosquitto
then run this command again (or point KAIRO_SIDECAR_MQTT__HOST/PORT at your broker).
MSG
        exit 1
    fi
    data="$PWD/data/mosquitto"
    mkdir -p "$data"
    cat > "$data/mosquitto.conf" <<CONF
# written by deploy/quickstart.sh: a loopback-only broker for trying kairo-sidecar out
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $data/
autosave_interval 10
max_queued_messages 100000
set_tcp_nodelay true
log_dest file $data/mosquitto.log
pid_file $data/mosquitto.pid
CONF
    if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
        chown -R mosquitto "$data"
    fi
    "$MOSQUITTO" -c "$data/mosquitto.conf" -d
    for _ in $(seq 50); do port_open 127.0.0.1 "$PORT" && break; sleep 0.1; done
    port_open 127.0.0.1 "$PORT" || { echo "mosquitto did not start: see $data/mosquitto.log" >&2; exit 1; }
    echo "started a local mosquitto on 127.0.0.1:$PORT (stop it with: kill \$(cat $data/mosquitto.pid))" >&2
fi
exec .venv/bin/kairo-sidecar run "$@"
