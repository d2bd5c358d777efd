#!/usr/bin/env bash
# Install what the tests need (Python test extras; DCMTK and dicom3tools from
# Debian when running as root; Chromium for the web app's tests) and run the whole test suite, on SQLite and on
# the PostgreSQL server at 127.0.0.1:5432. Extra arguments go to pytest
# (HILUM_TEST_JOBS=1 runs the test files one after another).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Each set-up step says how long it took (the suite's time budget counts them too).
step_started=$(date +%s)
step() {
  local now
  now=$(date +%s)
  echo "set-up: $1 ($(( now - step_started )) s)"
  step_started=$now
}

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # test certificates (TLS tests)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the web app's end-to-end tests (Playwright drives it)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (run as root or apt-get install them)" >&2
    exit 1
  fi
fi
step "system packages${need_apt:+: ${need_apt[*]}}"

# PostgreSQL: start the local cluster if it is installed but not running.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
step "Python packages (.venv, test extras)"
# The OpenID Connect provider the single sign-on tests run (Node 20+: panva/oidc-provider).
npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
step "OpenID provider for the SSO tests (npm ci)"
# The web app the end-to-end tests drive in headless Chromium (tests/test_webapp*.py).
scripts/build-web.sh --required
step "web app (npm ci, Vite build)"
.venv/bin/ruff check src tests bench
step "ruff"
# mypy (half a minute of one core on a fresh clone) checks beside the suite's start.
mypy_log=$(mktemp)
.venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
# Three test files at a time: most of the suite's time is real servers starting and
# waiting on the network, not CPU (one file's tests stay together: they share servers).
status=0
.venv/bin/python -m pytest -n "${HILUM_TEST_JOBS:-3}" --dist loadfile "$@" || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
cat "$mypy_log"
rm -f "$mypy_log"
if [ "$mypy_status" -ne 0 ]; then
  echo "mypy found problems (above)" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
