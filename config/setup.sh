#!/usr/bin/env bash
# Installs what keyedge needs and runs it: the engine behind README's two
# commands (`npm run up`, `npm test`). Every step is idempotent: a second run
# installs nothing and rebuilds only what changed.
#
#   config/setup.sh deps   system packages, npm ci, build
#   config/setup.sh up     deps, then the embedded default in the background
#   config/setup.sh down   stop what `up` started
#   config/setup.sh test   packages (+ test-only ones) and npm ci, one build of the product, benchmarks and tests, lint and format check, then the whole test suite
#   config/setup.sh test-packages   only the test-only Debian packages (a test
#                          run on its own installs what it drives this way)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VAR="$ROOT/var"
RUN="$VAR/run"
KEYEDGE=(node "$ROOT/dist/keyedge.cjs")

# Debian packages: what the product runs on, and what the tests drive it with
# (prometheus: test/prometheus-e2e.test.ts scrapes both admin ports with a real one;
# nghttp2-client and chromium: HTTP/2 clients; pebble: the ACME CA; etcd-server
# and etcd-client: the fleet's store, several members per test).
RUNTIME_PACKAGES=(softhsm2 openssl)
TEST_PACKAGES=(curl prometheus nghttp2-client chromium pebble etcd-server etcd-client)
# `npm ci` builds two native addons (pkcs11js, proxy/native) with node-gyp, which
# needs python3, make and g++: each is installed when it is not on PATH (a
# toolchain from elsewhere, or a python3 outside dpkg, is fine).
for tool in python3 make g++; do
  command -v "$tool" >/dev/null || RUNTIME_PACKAGES+=("$tool")
done

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
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then stop_packaged_prometheus; fi
}

# Debian's prometheus package starts a system service where an init system
# allows it (containers usually forbid it through policy-rc.d). The tests run
# their own instance on a free port, so one started by our install is stopped
# and left disabled rather than left holding :9090 and a TSDB of its own.
stop_packaged_prometheus() {
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null && update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  say "prometheus installed for the tests; its system service is not running (the tests start their own)"
}

# The addons of proxy/native/binding.gyp's targets, which `npm ci` builds: a node_modules installed before one was added
# (the lock file unchanged) lacks it, and is installed again rather than taken as complete.
NATIVE_ADDONS=(proxy/native/build/Release/keyless_bridge.node proxy/native/build/Release/no_dump.node)

ensure_node_modules() {
  local stamp="node_modules/.keyedge-lock.sha256" want addon built=1
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  for addon in node_modules/pkcs11js/build/Release/pkcs11.node "${NATIVE_ADDONS[@]}"; do [[ -f $addon ]] || built=0; done
  if [[ -f $stamp && $(cat "$stamp") == "$want" && $built == 1 ]]; then
    return 0
  fi
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed (the native build of pkcs11js needs python3, make and g++)"
  [[ -f node_modules/pkcs11js/build/Release/pkcs11.node ]] || die "pkcs11js was installed without its native build: check npm's allowScripts approval in package.json"
  for addon in "${NATIVE_ADDONS[@]}"; do
    [[ -f $addon ]] || die "$addon was not built: check allowScripts in package.json and that python3, make and g++ are installed"
  done
  printf '%s\n' "$want" >"$stamp"
}

build() {
  npx --no-install tsc -p . || die "the TypeScript build failed"
  bundle
}

# The CLI as one bundle (package.json's `bundle`; README, "Layout"): what `dist/keyedge.cjs` runs when it is newer
# than the compiled modules.
bundle() {
  npm run --silent bundle || die "bundling the compiled CLI failed (npm run bundle)"
}

# System packages and node_modules, no build.
installed() {
  check_node
  ensure_packages "${RUNTIME_PACKAGES[@]}" "$@"
  ensure_node_modules
}

deps() {
  installed "$@"
  build
}

wait_for_keyserver() {
  local pid log="$VAR/log/keyserver.log"
  pid=$(cat "$RUN/keyserver.pid")
  for _ in $(seq 1 50); do
    "${KEYEDGE[@]}" ping --config config/keyserver.json --count 1 >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "the key server exited during start-up (log: $log)"; }
    sleep 0.2
  done
  die "the key server does not answer on $VAR/keyserver.sock (log: $log)"
}

start_background() {
  local name=$1; shift
  local pidfile="$RUN/$name.pid" log="$VAR/log/$name.log"
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  nohup "$@" >>"$log" 2>&1 &
  echo $! >"$pidfile"
  STARTED+=("$name")
  say "$name started (pid $!, log $log)"
}

# What this `up` started (not what an earlier one had, found running): a failed `up` stops these, and only these.
STARTED=()

# A failed `up` (a die, or a command failing under set -e): the parts it had started are stopped, in down's order,
# before it exits with its status. They ran on after the error: the next `up` found them running and kept them.
stop_started_on_failure() {
  local status=$? name
  ((status != 0 && ${#STARTED[@]} > 0)) || return 0
  say 'stopping what this start had started'
  for name in "${STOP_ORDER[@]}"; do
    [[ " ${STARTED[*]} " == *" $name "* ]] || continue
    stop_one "$name" || true
  done
}

# Ctrl-C (SIGINT) or a SIGTERM during `up`: bash runs the EXIT trap on such a signal, but with the last command's
# status (0), so the parts started so far ran on, as after any failure before. Exiting with the signal's status (130,
# 143: 128 + its number) from here runs that trap with it, which stops them. A second Ctrl-C during those stops ends
# the script there (the processes already sent SIGTERM still stop; a later `down` finds any pid file left).
stop_started_on_signal() {
  local status=$1 signal=$2
  printf '\nkeyedge setup: %s during start-up\n' "$signal" >&2
  exit "$status"
}

start_keyserver() {
  # The demo key: the first `up` makes it inside the token; later ones reuse it.
  if ! "${KEYEDGE[@]}" key list --config config/keyserver.json --json | grep -q '"label": "demo-ec"'; then
    "${KEYEDGE[@]}" key generate --config config/keyserver.json --type ec-p256 --label demo-ec
  fi
  start_background keyserver "${KEYEDGE[@]}" keyserver --config config/keyserver.json
  wait_for_keyserver
}

# The demo certificate: its key is made inside the token (start_keyserver), the
# CSR is signed inside the token, and a local demo CA (key under ./var/demo,
# the only key on disk, and no customer's) issues the certificate.
make_demo_certificate() {
  local demo="$VAR/demo"
  [[ -f $demo/demo-chain.pem ]] && return 0
  mkdir -p "$demo"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=keyedge demo CA" -keyout "$demo/ca-key.pem" -out "$demo/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null \
    || die "openssl could not create the demo CA"
  "${KEYEDGE[@]}" key csr --config config/keyserver.json --key demo-ec --domain demo.localhost --out "$demo/demo.csr" >/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$demo/leaf.ext"
  openssl x509 -req -in "$demo/demo.csr" -CA "$demo/ca.pem" -CAkey "$demo/ca-key.pem" -CAcreateserial \
    -days 90 -copy_extensions copy -extfile "$demo/leaf.ext" -out "$demo/demo.pem" 2>/dev/null \
    || die "openssl could not issue the demo certificate"
  cat "$demo/demo.pem" "$demo/ca.pem" >"$demo/demo-chain.pem"
  say "demo certificate for demo.localhost issued by a local demo CA ($demo/ca.pem)"
}

# The proxy admin API's bearer token (reloads, certificate uploads): random,
# readable by the owner only, never printed.
make_admin_token() {
  [[ -s $VAR/admin.token ]] && return 0
  (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$VAR/admin.token")
  say "proxy admin token written to $VAR/admin.token (mode 0600)"
}

# --fail: the proxy answers 502 while its origin is not there, which is not up. --max-time: a front that took the
# connection and never answers (something else on :8443) is asked again, not waited on for ever.
CURL_DEMO=(curl --silent --show-error --fail --max-time 5 --cacert "$VAR/demo/ca.pem" --resolve demo.localhost:8443:127.0.0.1 https://demo.localhost:8443/)

running() { kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# A background process that ended during start-up (its port taken, say): the end of its log, and the error.
exited() {
  local log="$VAR/log/$1.log"
  tail -n 20 "$log" >&2
  die "the $1 exited during start-up (log: $log)"
}

up() {
  trap stop_started_on_failure EXIT
  trap 'stop_started_on_signal 130 SIGINT' INT
  trap 'stop_started_on_signal 143 SIGTERM' TERM
  # curl: the readiness check below, and the commands printed at the end.
  deps curl
  mkdir -p "$RUN" "$VAR/log"
  chmod 700 "$VAR"
  start_keyserver
  make_demo_certificate
  make_admin_token
  start_background demo-origin "${KEYEDGE[@]}" demo-origin --port 8080
  start_background proxy "${KEYEDGE[@]}" proxy --config config/proxy.json
  local ok=""
  # The demo origin checked too: one that could not take :8080 left the proxy answering 502, or forwarding to whatever
  # holds the port, and this said "keyedge is up".
  for _ in $(seq 1 100); do
    running demo-origin || exited demo-origin
    if "${CURL_DEMO[@]}" >/dev/null 2>&1; then ok=yes; break; fi
    running proxy || break
    sleep 0.1
  done
  [[ -n $ok ]] || { tail -n 20 "$VAR/log/proxy.log" >&2; die "the proxy does not answer on 127.0.0.1:8443 (log: $VAR/log/proxy.log)"; }
  running demo-origin || exited demo-origin
  trap - EXIT INT TERM
  cat <<EOF

keyedge is up (embedded default: SoftHSM2 token under ./var, demo origin on 127.0.0.1:8080).
The private key of demo.localhost is inside the token; the proxy holds only a reference to it.

  curl --cacert var/demo/ca.pem --resolve demo.localhost:8443:127.0.0.1 https://demo.localhost:8443/

  key server:  unix socket var/keyserver.sock, metrics http://127.0.0.1:9464/metrics
  proxy admin: http://127.0.0.1:9465/metrics /readyz /certs
  reload:      kill -HUP $(cat var/run/proxy.pid), or
               curl -X POST -H "Authorization: Bearer \$(cat var/admin.token)" http://127.0.0.1:9465/reload
  certificates: node dist/keyedge.cjs cert --help (store: var/certs)
  logs:        var/log/
  stop:        npm run down
EOF
}

STOP_WAIT_SECONDS=30

# The proxy first and the key server last (the pid files' name order stopped the key server first): handshakes the
# proxy still takes during its graceful stop need their signatures.
STOP_ORDER=(proxy demo-origin keyserver)

# Stops `name` by its pid file and says so. Status 2: no pid file; 1: it still runs past STOP_WAIT_SECONDS (said, and
# its pid file kept for the next `down`: it said "stopped" and forgot it, and the next `up` failed on the ports it
# still held); 0: stopped, or it was not running.
stop_one() {
  local name=$1 pidfile="$RUN/$1.pid" pid
  [[ -f $pidfile ]] || return 2
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # Past the proxy's and the key server's default shutdownGraceMs (10 s) and their own margins.
    for _ in $(seq 1 $((STOP_WAIT_SECONDS * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      printf 'keyedge setup: error: %s\n' "$name (pid $pid) did not stop within $STOP_WAIT_SECONDS s of SIGTERM and still runs: run npm run down again once it has, or kill -KILL $pid" >&2
      return 1
    fi
    say "stopped $name (pid $pid)"
    STOPPED=1
  else
    say "$name (pid $pid) was not running"
  fi
  rm -f "$pidfile"
}

# Says what it did, including nothing: a silent `down` left an operator unsure whether anything had run.
down() {
  local name status
  STOPPED=0
  for name in "${STOP_ORDER[@]}"; do
    status=0
    stop_one "$name" || status=$?
    ((status != 1)) || exit 1
  done
  ((STOPPED)) || say 'nothing to stop: no process started by `npm run up` is running'
}

case "${1:-}" in
  deps) deps ;;
  up) up ;;
  down) down ;;
  test-packages) ensure_packages "${TEST_PACKAGES[@]}" ;;
  test)
    installed "${TEST_PACKAGES[@]}"
    shift
    # One compile builds the product and the benchmarks (test/bench-*.test.ts run dist/bench/) and type-checks the
    # tests: test/tsconfig.json takes in all three, and emitting it writes what `tsc -p .` and `tsc -p bench` write
    # (the same root and outDir), plus dist/test. Three compiles of the product took about a minute on CI's 2 cores;
    # this one, about a third of that.
    npx --no-install tsc -p test --noEmit false || die "the product, the benchmarks or the tests do not build (tsc -p test --noEmit false)"
    # The tests' own output is not used (vitest runs their sources), and would go into `npm pack`'s package with dist/.
    rm -rf dist/test
    bundle
    npx --no-install biome ci . || die "lint or formatting errors (biome ci .): run 'npx biome check --write .' to fix what it can, then fix the rest by hand"
    exec npx --no-install vitest run --config test/vitest.config.ts "$@"
    ;;
  *) die "usage: config/setup.sh deps|up|down|test|test-packages" ;;
esac
