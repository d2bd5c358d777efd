#!/usr/bin/env bash
# The README's first command, the way a new user runs it: a fresh clone of this
# repository's HEAD in a temporary folder, a new virtual environment with the runtime
# dependencies only (no test extras), `bash scripts/serve.sh` on free ports; then
#   - GET /api/v1/health answers "ok",
#   - the web app's page is served at /,
#   - a C-ECHO from a registered AE (pynetdicom from that same environment) succeeds,
#   - every module under src/hilum imports in that environment.
# Stops the server and exits non-zero, with the server's log, if any step fails.
# Used by .ci/run before the test suite; runs on its own too.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d /tmp/hilum-fresh-start.XXXXXX)
server_pid=""
cleanup() {
  # serve.sh runs in a process group of its own: stop all of it (pip, npm, hilum serve).
  if [ -n "$server_pid" ] && kill -0 -- "-$server_pid" 2>/dev/null; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 -- "-$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "fresh start: $*" >&2
  [ -f "$work/serve.log" ] && { echo "--- serve.sh output:" >&2; tail -n 60 "$work/serve.log" >&2; }
  exit 1
}

# A port nothing listens on, below the test suite's bands (20000-31999) and the
# kernel's ephemeral range.
free_port() {
  "$PYTHON" - "$@" <<'EOF'
import random, socket, sys
taken = {int(p) for p in sys.argv[1:]}
for _ in range(500):
    port = random.randrange(17000, 19999)
    if port in taken:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    sys.exit("no free port")
EOF
}

started=$(date +%s)
git clone --quiet --no-hardlinks "$repo" "$work/hilum"
cd "$work/hilum"
dicom_port=$(free_port)
http_port=$(free_port "$dicom_port")

# The README's first command, as is; the server keeps running in the background.
setsid bash scripts/serve.sh --dicom-port "$dicom_port" --http-port "$http_port" >"$work/serve.log" 2>&1 &
server_pid=$!

base="http://127.0.0.1:$http_port"
deadline=$(( $(date +%s) + 1200 ))  # the first run installs everything: give it time
until curl -fsS "$base/api/v1/health" -o "$work/health.json" 2>/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || fail "serve.sh exited before Hilum answered"
  [ "$(date +%s)" -lt "$deadline" ] || fail "no answer from $base/api/v1/health"
  sleep 1
done
grep -q '"status":"ok"' "$work/health.json" || fail "health is not ok: $(cat "$work/health.json")"

page=$(curl -fsS "$base/") || fail "GET / failed"
case "$page" in
  *'<div id="app">'*) ;;
  *) fail "GET / is not the web app: $(printf '%s' "$page" | head -c 300)" ;;
esac
# The built application's script (web/dist/assets/index-*.js) is served too.
script=$(printf '%s' "$page" | grep -o 'src="/assets/[^"]*\.js"' | head -n 1 | cut -d'"' -f2)
[ -n "$script" ] || fail "the web app's page names no built script (was web/ built?)"
curl -fsS "$base$script" -o /dev/null || fail "GET $script failed"

venv_python="$work/hilum/.venv/bin/python"
"$work/hilum/.venv/bin/hilum" ae add fresh-ci FRESHCI 127.0.0.1 "$(free_port "$dicom_port" "$http_port")" \
  --data-dir ./hilum-data >/dev/null || fail "hilum ae add failed"
"$venv_python" - "$dicom_port" <<'EOF' || fail "C-ECHO from the registered AE FRESHCI failed"
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification

ae = AE(ae_title="FRESHCI")
ae.add_requested_context(Verification)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="HILUM")
if not assoc.is_established:
    sys.exit("association not established")
status = assoc.send_c_echo()
assoc.release()
if not status or status.Status != 0:
    sys.exit(f"C-ECHO status {status}")
EOF

# Every module of the package imports with the runtime dependencies alone.
"$venv_python" - <<'EOF' || fail "a module does not import without the test extras"
import importlib, pkgutil, sys
import hilum

failed = []
for module in pkgutil.walk_packages(hilum.__path__, "hilum."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:  # noqa: BLE001 - report every one
        failed.append(f"{module.name}: {type(exc).__name__}: {exc}")
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
EOF

echo "fresh start: serve.sh answered health, the web app and C-ECHO in $(( $(date +%s) - started )) s"
