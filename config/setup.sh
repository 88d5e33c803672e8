#!/usr/bin/env bash
# Installs what keyedge needs and runs it: the engine behind README's two
# commands (`npm run up`, `npm test`). Every step is idempotent: a second run
# installs nothing and rebuilds only what changed.
#
#   config/setup.sh deps   system packages, npm ci, build
#   config/setup.sh up     deps, then the embedded default in the background
#   config/setup.sh down   stop what `up` started
#   config/setup.sh test   deps (+ test-only packages), then the whole test suite
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VAR="$ROOT/var"
RUN="$VAR/run"
KEYEDGE=(node "$ROOT/dist/keyserver/cli/keyedge.cjs")

# Debian packages: what the product runs on, and what the tests drive it with.
RUNTIME_PACKAGES=(softhsm2 openssl)
TEST_PACKAGES=(curl)

say() { printf 'keyedge setup: %s\n' "$*"; }
die() { printf 'keyedge setup: error: %s\n' "$*" >&2; exit 1; }

check_node() {
  command -v node >/dev/null || die "Node.js is not installed (need 20.19 or newer)"
  local major minor
  IFS=. read -r major minor _ <<<"$(node -p 'process.versions.node')"
  if (( major < 20 || (major == 20 && minor < 19) )); then
    die "Node.js $(node -v) is too old: keyedge needs 20.19 or newer"
  fi
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$pkg"
  done
}

ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get here: install them with your package manager"
  if [[ $(id -u) -ne 0 ]]; then
    die "missing packages: ${missing[*]}. Install them as root: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  fi
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the network or the apt sources"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

ensure_node_modules() {
  local stamp="node_modules/.keyedge-lock.sha256" want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" && -f node_modules/pkcs11js/build/Release/pkcs11.node ]]; then
    return 0
  fi
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed (the native build of pkcs11js needs python3, make and g++)"
  [[ -f node_modules/pkcs11js/build/Release/pkcs11.node ]] || die "pkcs11js was installed without its native build: check npm's allowScripts approval in package.json"
  printf '%s\n' "$want" >"$stamp"
}

build() {
  npx --no-install tsc -p . || die "the TypeScript build failed"
}

deps() {
  check_node
  ensure_packages "${RUNTIME_PACKAGES[@]}" "$@"
  ensure_node_modules
  build
}

wait_for_socket() {
  local path=$1 pid=$2 log=$3
  for _ in $(seq 1 100); do
    [[ -S $path ]] && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "the key server exited during start-up (log: $log)"; }
    sleep 0.1
  done
  die "the key server did not open $path within 10 s (log: $log)"
}

start_keyserver() {
  local pidfile="$RUN/keyserver.pid" log="$VAR/log/keyserver.log"
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "key server already running (pid $(cat "$pidfile"))"
    return 0
  fi
  # The demo key: the first `up` makes it inside the token; later ones reuse it.
  if ! "${KEYEDGE[@]}" key list --config config/keyserver.json --json | grep -q '"label": "demo-ec"'; then
    "${KEYEDGE[@]}" key generate --config config/keyserver.json --type ec-p256 --label demo-ec
  fi
  nohup "${KEYEDGE[@]}" keyserver --config config/keyserver.json >>"$log" 2>&1 &
  echo $! >"$pidfile"
  wait_for_socket "$VAR/keyserver.sock" "$!" "$log"
  say "key server running (pid $(cat "$pidfile"), log $log)"
}

up() {
  deps
  mkdir -p "$RUN" "$VAR/log"
  chmod 700 "$VAR"
  start_keyserver
  "${KEYEDGE[@]}" ping --config config/keyserver.json --count 1 >/dev/null || die "the key server does not answer on $VAR/keyserver.sock"
  cat <<EOF

keyedge is up (embedded default: SoftHSM2 token under ./var).
  key server:  unix socket $VAR/keyserver.sock
  try:         curl -s http://127.0.0.1:9464/healthz
               node dist/keyserver/cli/keyedge.cjs ping --config config/keyserver.json
               node dist/keyserver/cli/keyedge.cjs key list --config config/keyserver.json
  stop:        npm run down
EOF
}

down() {
  local pidfile pid
  for pidfile in "$RUN"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      say "stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  deps) deps ;;
  up) up ;;
  down) down ;;
  test)
    deps "${TEST_PACKAGES[@]}"
    shift
    npx --no-install tsc --noEmit -p test || die "the tests do not type-check"
    exec npx --no-install vitest run --config test/vitest.config.ts "$@"
    ;;
  *) die "usage: config/setup.sh deps|up|down|test" ;;
esac
