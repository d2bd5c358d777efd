#!/usr/bin/env bash
# Install Hilum into .venv and start it on the embedded default
# (SQLite index + files under ./hilum-data). Extra arguments go to `hilum serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/hilum serve --data-dir ./hilum-data "$@"
