#!/usr/bin/env bash
# Set up and run the whole test suite: a venv in .venv with the test extra (the versions of
# constraints.txt), the linter, the type checker, the import-layer contracts (lint-imports) and
# pytest. Needs the mosquitto binary (sudo apt-get install mosquitto); the tests start their own
# brokers on free loopback ports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY=$candidate; break
    fi
done
[ -n "$PY" ] || { echo "Python >= 3.11 is needed" >&2; exit 1; }
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "the tests need the mosquitto binary: sudo apt-get install mosquitto" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache   # the layer contracts of pyproject.toml
exec .venv/bin/python -m pytest "$@"
