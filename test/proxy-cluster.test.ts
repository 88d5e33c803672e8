import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { nextAnswer, splitAll } from './helpers/fuzz-h1-parse.js';
import { CLI, sleep } from './helpers/basics.js';
import { jsonLinesOf, waitFor } from './helpers/proxy-cluster.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';

// `keyedge proxy` as an operator runs it: a primary and two workers sharing
// the listening socket and the session-ticket key.
let lab: KeylessLab;
let proxy: ChildProcess;
let port: number;
let adminPort: number;
let ca: string;
const lines: Record<string, unknown>[] = [];
/** The origin: answers at once, but /held only when the test releases it; every path it was asked for. */
let origin: http.Server;
const originSaw: string[] = [];
const held: (() => void)[] = [];

function workerPids(): Set<number> {
  return new Set(lines.filter((l) => String(l.name).startsWith('proxy-worker') && l.msg === 'proxy worker listening').map((l) => l.pid as number));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test']);
  origin = http.createServer((req, res) => {
    originSaw.push(req.url ?? '');
    if (req.url === '/held') held.push(() => res.end('held'));
    else req.resume().on('end', () => res.end('ok'));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  port = await freePort();
  adminPort = await freePort();
  const configFile = join(lab.dir, 'proxy.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      stateDir: join(lab.dir, 'state'),
      workers: 2,
      keyserver: { socket: lab.socket },
      listen: [{ host: '127.0.0.1', port }],
      certificates: [{ name: 'ec', chain: ec.file }],
      sni: { default: 'ec' },
      domains: [{ name: 'ec.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      admin: { host: '127.0.0.1', port: adminPort },
      log: { level: 'info' },
      shutdownGraceMs: 5000,
    }),
  );
  proxy = spawn(process.execPath, [CLI, 'proxy', '--config', configFile], { stdio: ['ignore', 'pipe', 'inherit'] });
  jsonLinesOf(proxy.stdout!, lines);
  // A start on a loaded machine (CI's 2 cores, other files' proxies beside it) took more than waitFor's default 15 s.
  await waitFor('two workers', () => (workerPids().size === 2 ? true : undefined), 45_000);
  await waitFor('readiness', async () => ((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200 ? true : undefined), 45_000);
}, 120_000);
afterAll(async () => {
  if (proxy?.exitCode === null) {
    proxy.kill('SIGTERM');
    await new Promise((resolve) => proxy.once('exit', resolve));
  }
  await new Promise((resolve) => origin?.close(resolve));
  await lab?.close();
});

describe('keyedge proxy with two workers', () => {
  it('resumes tickets issued by one worker on the other, without asking the key server', async () => {
    const first = await nodeGet(port, 'ec.lab.test', ca);
    expect(first).toMatchObject({ ok: true, resumed: false });
    const signs = await lab.signCount();
    const before = lines.length;
    // The kernel spreads connections over both workers (SCHED_NONE).
    for (let i = 0; i < 20; i++) expect(await nodeGet(port, 'ec.lab.test', ca, { session: first.session! })).toMatchObject({ ok: true, resumed: true });
    expect(await lab.signCount()).toBe(signs);
    const servedBy = await waitFor('access lines', () => {
      const access = lines.slice(before).filter((l) => l.access === true && l.resumed === true);
      return access.length >= 20 ? new Set(access.map((l) => l.pid)) : undefined;
    });
    expect(servedBy.size).toBe(2);
  });

  it('sums both workers in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const resumed = /keyedge_proxy_tls_handshakes_total\{result="ok",tls_version="TLSv1.3",resumed="true"\} (\d+)/.exec(text);
    expect(Number(resumed?.[1])).toBeGreaterThanOrEqual(20);
    expect(text).toMatch(/keyedge_proxy_keyless_signs_total \d+/);
  });

  it("SIGUSR2 (HAProxy's reload, a stray signal) ends neither the primary nor a worker: the primary says it is ignored, both workers go on serving", async () => {
    const workers = [...workerPids()];
    expect(workers).toHaveLength(2);
    const before = lines.length;
    // To the primary, then to the whole process group, as a supervisor's group signal would (each worker gets it too).
    process.kill(proxy.pid!, 'SIGUSR2');
    for (const pid of [proxy.pid!, ...workers]) process.kill(pid, 'SIGUSR2');
    const ended = (): string | undefined =>
      proxy.exitCode !== null || proxy.signalCode !== null
        ? `the primary ended (${proxy.exitCode ?? proxy.signalCode})`
        : lines.slice(before).some((l) => l.msg === 'proxy worker died; starting a replacement')
          ? 'a worker died'
          : undefined;
    const said = await waitFor(
      'the primary to say SIGUSR2 is ignored, or to end',
      () =>
        // Two signals sent at once may be delivered as one (standard signals are not queued).
        ended() ?? (lines.slice(before).some((l) => String(l.msg).startsWith('SIGUSR2 ignored')) ? 'said' : undefined),
    );
    expect(said).toBe('said');
    for (let i = 0; i < 4; i++) expect((await nodeGet(port, 'ec.lab.test', ca)).ok).toBe(true);
    expect(ended()).toBeUndefined();
    expect([...workerPids()]).toEqual(workers);
  });

  it("SIGUSR1 (nginx's log reopening) opens no inspector in the primary or a worker: each says it is ignored, both go on serving", async () => {
    // Node opened its inspector on 127.0.0.1:9229, which any local user may connect to and run code in the process.
    const workers = [...workerPids()];
    const before = lines.length;
    for (const pid of [proxy.pid!, ...workers]) process.kill(pid, 'SIGUSR1');
    const saidBy = (): Set<unknown> =>
      new Set(
        lines
          .slice(before)
          .filter((l) => String(l.msg).startsWith('SIGUSR1 ignored'))
          .map((l) => l.pid),
      );
    await waitFor('the primary and both workers to say SIGUSR1 is ignored', () => (saidBy().size === 3 ? true : undefined), 20_000);
    expect(saidBy()).toEqual(new Set([proxy.pid, ...workers]));
    for (let i = 0; i < 4; i++) expect((await nodeGet(port, 'ec.lab.test', ca)).ok).toBe(true);
    expect([...workerPids()]).toEqual(workers);
  });

  it('replaces a worker that dies', async () => {
    const [victim] = [...workerPids()];
    process.kill(victim!, 'SIGKILL');
    await waitFor('a replacement worker', () => (workerPids().size === 3 ? true : undefined));
    await waitFor('the log line', () => (lines.some((l) => l.msg === 'proxy worker died; starting a replacement') ? true : undefined));
    for (let i = 0; i < 4; i++) expect((await nodeGet(port, 'ec.lab.test', ca)).ok).toBe(true);
  });

  it('stops gracefully on SIGTERM: a busy keep-alive connection gets the answers to what it forwarded, the last with `Connection: close`', async () => {
    const client = await rawTls(port, 'ec.lab.test', ca);
    const get = (path: string): string => `GET ${path} HTTP/1.1\r\nhost: ec.lab.test\r\n\r\n`;
    // A POST pipelined behind a held GET: forwarded at once, its answer queued behind the held one's (RFC 9112 §9.3.2).
    client.socket.write(`${get('/held')}POST /pipelined HTTP/1.1\r\nhost: ec.lab.test\r\ncontent-length: 4\r\n\r\nbody`);
    await waitFor('both requests at the origin', () => (held.length === 1 && originSaw.includes('/pipelined') ? true : undefined));
    const started = Date.now();
    proxy.kill('SIGTERM');
    const exited = new Promise((resolve) => proxy.once('exit', (c, signal) => resolve(c ?? signal)));
    await sleep(500);
    // Sent during the stop: not processed, as nginx reads no request after the one in progress.
    client.socket.write(get('/after-stop'));
    await sleep(200);
    held.shift()?.();
    await Promise.race([client.closed, sleep(4000).then(() => Promise.reject(new Error('the busy connection stayed open')))]);
    const answers = splitAll(client.text(), (rest) => nextAnswer(rest, () => false, false)).messages;
    expect(answers.map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([
      ['HTTP/1.1 200 OK', 'held', ['keep-alive']],
      ['HTTP/1.1 200 OK', 'ok', ['close']],
    ]);
    expect(originSaw).not.toContain('/after-stop');
    expect(await exited).toBe(0);
    // Workers stop once their connections are done rather than waiting out the grace period.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(lines.some((l) => l.msg === 'proxy stopped')).toBe(true);
  });
});
