#!/usr/bin/env bash
# Install Hilum into .venv and start it on the embedded default
# (SQLite index + files under ./hilum-data), with the web app built from web/ when
# Node.js is there. Extra arguments go to `hilum serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
# The web app (study browser and viewer) at http://<host>:8042/ (needs Node.js 20+).
scripts/build-web.sh
exec .venv/bin/hilum serve --data-dir ./hilum-data "$@"
