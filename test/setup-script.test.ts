import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO, removeDir, tempDir } from './helpers/basics.js';

// config/setup.sh (`npm test`, `npm run up`) skips `npm ci` when node_modules
// matches the lock file and the native addons are built. An addon added to
// proxy/native/binding.gyp (no_dump.node) changes no lock file: a checkout
// installed before it was taken as complete, the addon never built, and a
// proxy with an ACME PIN variable refused to start (KEYEDGE_ERR_SETUP).
const SETUP = join(REPO, 'config', 'setup.sh');
const dir = tempDir('keyedge-setup-');

afterAll(() => removeDir(dir));

describe('config/setup.sh: ensure_node_modules', () => {
  it('knows every addon proxy/native/binding.gyp builds', () => {
    const gyp = readFileSync(join(REPO, 'proxy', 'native', 'binding.gyp'), 'utf8');
    const targets = [...gyp.matchAll(/"target_name":\s*"([^"]+)"/g)].map((m) => m[1]);
    expect(targets.length).toBeGreaterThanOrEqual(2);
    const script = readFileSync(SETUP, 'utf8');
    for (const target of targets) expect(script.includes(`proxy/native/build/Release/${target}.node`), `${target}.node in setup.sh`).toBe(true);
  });

  it('runs npm ci in a tree installed from the same lock file whose proxy/native lacks one of its addons', () => {
    // The tree as an install from before no_dump.node: the lock's stamp, pkcs11js and the keyless bridge built.
    const lock = '{"lockfileVersion": 3}\n';
    writeFileSync(join(dir, 'package-lock.json'), lock);
    mkdirSync(join(dir, 'node_modules', 'pkcs11js', 'build', 'Release'), { recursive: true });
    writeFileSync(join(dir, 'node_modules', '.keyedge-lock.sha256'), `${createHash('sha256').update(lock).digest('hex')}\n`);
    writeFileSync(join(dir, 'node_modules', 'pkcs11js', 'build', 'Release', 'pkcs11.node'), '');
    mkdirSync(join(dir, 'proxy', 'native', 'build', 'Release'), { recursive: true });
    writeFileSync(join(dir, 'proxy', 'native', 'build', 'Release', 'keyless_bridge.node'), '');
    // The script's own function and list, with npm, say and die recording what they were asked.
    const harness = `
      eval "$(sed -n '/^NATIVE_ADDONS=/p;/^ensure_node_modules() {/,/^}/p' "$0")"
      say() { echo "say: $*"; }
      die() { echo "die: $*"; exit 1; }
      npm() { echo "npm $*"; }
      cd "$1" && ensure_node_modules && echo "skipped"`;
    let out: string;
    try {
      out = execFileSync('bash', ['-c', harness, SETUP, dir], { encoding: 'utf8', timeout: 10_000 });
    } catch (err) {
      out = String((err as { stdout?: string }).stdout);
    }
    expect(out).toContain('npm ci');
    // The stubbed npm built nothing: the missing addon is named.
    expect(out).toContain('die: proxy/native/build/Release/no_dump.node was not built');
  });
});

/**
 * `up` and `down` as the script has them, with what they start made small: the
 * key server, demo certificate and admin token steps stubbed, `KEYEDGE` a
 * script that plays the demo origin and the proxy as `fake` says, and curl's
 * request for https://demo.localhost:8443/ sent to `front` (a port-0 server
 * playing the proxy's TLS front) instead. Runs `steps` (bash) in `root`.
 */
function runSetup(
  root: string,
  fake: string,
  front: number,
  steps: string,
  spawned?: (child: ChildProcess) => void,
): Promise<{ status: number; signal: string | null; stdout: string; stderr: string }> {
  writeFileSync(join(root, 'fake-keyedge.sh'), fake);
  mkdirSync(join(root, 'bin'), { recursive: true });
  // The real curl (bin/ taken off PATH), its request for https://demo.localhost:8443/ sent to `front`.
  const curl = [
    '#!/usr/bin/env bash',
    'args=() skip=0',
    'for arg in "$@"; do',
    '  if ((skip)); then skip=0; continue; fi',
    `  case $arg in --cacert | --resolve) skip=1 ;; https://demo.localhost:8443/) args+=("http://127.0.0.1:${front}/") ;; *) args+=("$arg") ;; esac`,
    'done',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: bash expansions, not a template
    'PATH=${PATH#*:} exec curl "${args[@]}"',
  ];
  writeFileSync(join(root, 'bin', 'curl'), `${curl.join('\n')}\n`, { mode: 0o755 });
  const harness = `
    cd "$1"; FRONT=$2
    eval "$(sed '/^case "\${1:-}" in/,$d; s|^ROOT=.*|ROOT=$PWD|' "$0")"
    set +e
    deps() { :; }; start_keyserver() { :; }; make_demo_certificate() { :; }; make_admin_token() { :; }
    KEYEDGE=(bash "$1/fake-keyedge.sh")
    # curl: bin/curl, a command, not a function: a function's redirections (up's 2>/dev/null) are in force in the shell
    # when a trap runs after it, where the real curl's are not.
    PATH="$PWD/bin:$PATH"
    ${steps}`;
  return new Promise((resolve) => {
    // detached: its own process group, which a terminal's Ctrl-C signals as a whole (execFile has no such option).
    const child = spawn('bash', ['-c', harness, SETUP, root, String(front)], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, signal, stdout, stderr });
    });
    spawned?.(child);
  });
}

/** A stand-in for the proxy's TLS front: answers every request with `status`, as the proxy does 502 without its origin. */
async function front(status: number): Promise<http.Server> {
  const server = http.createServer((_req, res) => res.writeHead(status).end(`status ${status}\n`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/**
 * SIGKILLs the process a pid file names, if it names one: only a whole number above 1. An empty or cut pid file read
 * as Number('') is 0, and process.kill(0) signals the test's own process group: vitest and everything it runs.
 */
function killByPidFile(file: string): void {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Stopped already.
  }
}

describe('config/setup.sh: up and down', () => {
  it('up fails, naming the demo origin and its log, when the origin could not start (its port taken): not "keyedge is up" over a 502', async () => {
    const root = tempDir('keyedge-setup-up-');
    const server = await front(502);
    try {
      const fake = `case $1 in
        demo-origin) echo "keyedge: KEYEDGE_ERR_SETUP: cannot listen on tcp 127.0.0.1:8080: EADDRINUSE" >&2; exit 1 ;;
        proxy) exec sleep 60 ;;
      esac`;
      const result = await runSetup(root, fake, (server.address() as AddressInfo).port, 'trap "down >/dev/null 2>&1" EXIT; up');
      expect(result.stdout).not.toContain('keyedge is up');
      expect(result.status).toBe(1);
      expect(result.stderr).toContain('cannot listen on tcp 127.0.0.1:8080: EADDRINUSE');
      expect(result.stderr).toMatch(/keyedge setup: error: the demo-origin exited during start-up \(log: .*demo-origin\.log\)/);
    } finally {
      server.close();
      removeDir(root);
    }
  }, 90_000);

  it('up that fails stops what it started, in the order down uses (the proxy first, the key server last), and exits 1', async () => {
    // The proxy and the key server it had started ran on after "error: the demo-origin exited during start-up": the next
    // `up` found them running and kept them, holding the ports and the old build, and only `down` stopped them.
    const root = tempDir('keyedge-setup-undo-');
    const server = await front(502);
    try {
      // The key server and the proxy each say they are ready once their TERM trap is set, and the origin fails only
      // then: up, seeing it gone right after starting the proxy, sent TERM before the proxy's trap was set, on a loaded
      // machine, and the proxy ended without writing to order.
      const fake = `case $1 in
        demo-origin)
          for _ in $(seq 1 200); do [ -f "$PWD/ready" ] && [ "$(wc -l < "$PWD/ready")" -ge 2 ] && break; sleep 0.05; done
          echo "keyedge: KEYEDGE_ERR_SETUP: cannot listen on tcp 127.0.0.1:8080: EADDRINUSE" >&2; exit 1 ;;
        keyserver | proxy) trap "echo $1 >>'$PWD/order'; exit 0" TERM; echo $1 >>"$PWD/ready"; while :; do sleep 0.05; done ;;
      esac`;
      // A bash array expansion, not a template placeholder.
      // biome-ignore lint/suspicious/noTemplateCurlyInString: bash's "${KEYEDGE[@]}", passed to bash as written
      const steps = 'start_keyserver() { start_background keyserver "${KEYEDGE[@]}" keyserver; }; up; echo "up said $?"';
      const result = await runSetup(root, fake, (server.address() as AddressInfo).port, steps);
      expect(result.status).toBe(1);
      expect(result.stdout).not.toContain('up said');
      expect(result.stderr).toMatch(/keyedge setup: error: the demo-origin exited during start-up/);
      expect(result.stdout).toMatch(
        /keyedge setup: stopping what this start had started\nkeyedge setup: stopped proxy \(pid \d+\)\nkeyedge setup: demo-origin \(pid \d+\) was not running\nkeyedge setup: stopped keyserver \(pid \d+\)\n$/,
      );
      expect(readFileSync(join(root, 'order'), 'utf8')).toBe('proxy\nkeyserver\n');
      expect(readdirSync(join(root, 'var', 'run'))).toEqual([]);
    } finally {
      // Before the fix, what the failed `up` left running.
      for (const name of ['proxy', 'keyserver']) {
        killByPidFile(join(root, 'var', 'run', `${name}.pid`));
      }
      server.close();
      removeDir(root);
    }
  }, 90_000);

  for (const [signal, status, group] of [
    ['SIGINT', 130, true],
    ['SIGTERM', 143, false],
  ] as const) {
    it(`up stopped by ${signal} (${group ? "a terminal's Ctrl-C" : 'kill'}) stops what it had started and exits ${status}`, async () => {
      // bash ran the EXIT trap on the signal with the last command's status, 0, so the clean-up of a failed `up`
      // thought it had succeeded: the key server, demo origin and proxy it had started ran on after the Ctrl-C.
      const root = tempDir('keyedge-setup-signal-');
      // A front that takes the request and never answers: up waits on it (curl --max-time 5 a time) until signalled.
      const server = http.createServer(() => {});
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        // Each says it is ready once its TERM trap is set: a signal before that ended it without writing to order.
        const fake = `trap "echo $1 >>'$PWD/order'; exit 0" TERM; echo $1 >>"$PWD/ready"; while :; do sleep 0.05; done`;
        // biome-ignore lint/suspicious/noTemplateCurlyInString: bash expansions, not a template
        const steps = 'start_keyserver() { start_background keyserver "${KEYEDGE[@]}" keyserver; }; up; echo "up said $?"';
        const result = await runSetup(root, fake, (server.address() as AddressInfo).port, steps, (child) => {
          const ready = join(root, 'ready');
          const poll = setInterval(() => {
            if (!existsSync(ready) || readFileSync(ready, 'utf8').split('\n').length < 4) return;
            clearInterval(poll);
            // Ctrl-C signals the terminal's foreground process group: the script and whatever it is waiting on (the
            // background parts ignore SIGINT, as a non-interactive shell's & jobs do). kill signals the script alone.
            process.kill(group ? -child.pid! : child.pid!, signal);
          }, 50);
          child.on('exit', () => clearInterval(poll));
        });
        expect(result.signal, result.stderr).toBe(null);
        expect(result.status, result.stderr).toBe(status);
        expect(result.stdout).not.toContain('up said');
        expect(result.stdout).not.toContain('keyedge is up');
        expect(result.stderr).toContain(`keyedge setup: ${signal} during start-up`);
        expect(result.stdout).toMatch(
          /keyedge setup: stopping what this start had started\nkeyedge setup: stopped proxy \(pid \d+\)\nkeyedge setup: stopped demo-origin \(pid \d+\)\nkeyedge setup: stopped keyserver \(pid \d+\)\n$/,
        );
        expect(readFileSync(join(root, 'order'), 'utf8')).toBe('proxy\ndemo-origin\nkeyserver\n');
        expect(readdirSync(join(root, 'var', 'run'))).toEqual([]);
      } finally {
        // Before the fix, what the interrupted `up` left running.
        for (const name of ['proxy', 'demo-origin', 'keyserver']) {
          killByPidFile(join(root, 'var', 'run', `${name}.pid`));
        }
        server.closeAllConnections();
        server.close();
        removeDir(root);
      }
    }, 90_000);
  }

  it('down says so when nothing is running (never up, or down twice), and names a process that had ended by itself', async () => {
    const root = tempDir('keyedge-setup-down-');
    try {
      const never = await runSetup(root, '', 9, 'down');
      expect(never.status).toBe(0);
      expect(never.stdout).toBe('keyedge setup: nothing to stop: no process started by `npm run up` is running\n');
      // A pid file whose process is gone (it crashed, or the machine restarted): said, and the file removed.
      mkdirSync(join(root, 'var', 'run'), { recursive: true });
      writeFileSync(join(root, 'var', 'run', 'proxy.pid'), '2147483646\n');
      const stale = await runSetup(root, '', 9, 'down; down');
      expect(stale.status).toBe(0);
      expect(stale.stdout).toBe(
        'keyedge setup: proxy (pid 2147483646) was not running\n' +
          'keyedge setup: nothing to stop: no process started by `npm run up` is running\n' +
          'keyedge setup: nothing to stop: no process started by `npm run up` is running\n',
      );
    } finally {
      removeDir(root);
    }
  }, 60_000);

  it("down stops the proxy first and the key server last: the proxy's graceful stop still has its key server", async () => {
    // By the pid files' names, the key server was stopped before the proxy: handshakes the proxy still took during its
    // shutdown grace found no key server to sign them.
    const root = tempDir('keyedge-setup-order-');
    try {
      // down only once each has set its TERM trap: a TERM before that ends it without writing to order.
      const steps = `mkdir -p "$RUN"
        for name in keyserver demo-origin proxy; do
          (trap "echo $name >>'$PWD/order'; exit 0" TERM; echo $name >>ready; while :; do sleep 0.05; done) &
          echo $! >"$RUN/$name.pid"
        done
        for _ in $(seq 1 200); do [ -f ready ] && [ "$(wc -l < ready)" -ge 3 ] && break; sleep 0.05; done
        down`;
      const result = await runSetup(root, '', 9, steps);
      expect(result.status, result.stderr).toBe(0);
      expect(readFileSync(join(root, 'order'), 'utf8')).toBe('proxy\ndemo-origin\nkeyserver\n');
    } finally {
      removeDir(root);
    }
  }, 60_000);

  it('down says a process that did not stop in time is still running, keeps its pid file and fails', async () => {
    // It said "stopped proxy" after 10 s whatever had happened and removed the pid file: a process still stopping, or
    // stuck, ran on untracked, and no later `down` could find it.
    const root = tempDir('keyedge-setup-stuck-');
    let stuck: number | undefined;
    try {
      const steps = `mkdir -p "$RUN"
        (trap '' TERM; echo >ready; while :; do sleep 0.05; done) </dev/null >/dev/null 2>&1 &
        echo $! >"$RUN/proxy.pid"
        echo $! >stuck.pid
        STOP_WAIT_SECONDS=1
        for _ in $(seq 1 200); do [ -f ready ] && break; sleep 0.05; done
        down`;
      const result = await runSetup(root, '', 9, steps);
      stuck = Number(readFileSync(join(root, 'stuck.pid'), 'utf8'));
      expect(result.status).toBe(1);
      expect(readFileSync(join(root, 'var', 'run', 'proxy.pid'), 'utf8')).toBe(`${stuck}\n`);
      expect(result.stdout).not.toContain('stopped proxy');
      expect(result.stderr).toContain(`keyedge setup: error: proxy (pid ${stuck}) did not stop within 1 s of SIGTERM and still runs`);
      expect(() => process.kill(stuck!, 0)).not.toThrow();
    } finally {
      if (stuck !== undefined && stuck > 0) process.kill(stuck, 'SIGKILL');
      removeDir(root);
    }
  }, 60_000);
});
