#!/usr/bin/env bash
# Build the web application (web/ -> web/dist) that `hilum serve` serves at /.
# Needs Node.js 20+ and npm. Installs the locked packages (npm ci) when
# package-lock.json changed, and rebuilds only when a source is newer than the
# build. --required: fail without Node (tests); otherwise warn and go on.
set -euo pipefail
cd "$(dirname "$0")/../web"
required=false
[ "${1:-}" = "--required" ] && required=true
if ! command -v npm >/dev/null 2>&1; then
  if $required; then
    echo "Node.js 20+ and npm are needed to build the web app (web/)" >&2
    exit 1
  fi
  echo "warning: npm not found: the web app is not built; / will say so (install Node.js 20+)" >&2
  exit 0
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ -f dist/index.html ] && [ -z "$(find src public index.html vite.config.ts tsconfig.json package-lock.json -newer dist/index.html -print -quit)" ]; then
  exit 0
fi
log=$(mktemp)
# Vite's warnings about Node modules in the codecs are expected: show the output only on failure.
if ! npm run --silent build >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "web app built: web/dist"
