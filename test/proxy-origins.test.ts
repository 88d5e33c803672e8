import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { jsonLineSink, refusedPort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Origins that fail: refused (502), silent (504), reset mid-answer (the client
// sees the answer cut, the log says why); the proxy keeps serving.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
const lines: Record<string, unknown>[] = [];
const servers: net.Server[] = [];

async function listen(server: net.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  const silent = await listen(net.createServer(() => undefined));
  const resetting = await listen(
    http.createServer((_req, res) => {
      res.writeHead(200, { 'content-length': 10_000 });
      res.write('partial');
      setTimeout(() => res.socket?.destroy(), 20);
    }),
  );
  const down = await refusedPort();
  const sink = jsonLineSink(lines);
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'slow.lab.test', origin: `http://127.0.0.1:${silent}` },
        { name: 'down.lab.test', origin: `http://127.0.0.1:${down}` },
        { name: 'reset.lab.test', origin: `http://127.0.0.1:${resetting}` },
        { name: 'ok.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
      ],
      limits: { originResponseTimeoutMs: 300, originConnectTimeoutMs: 1000 },
    }),
    { log: createLogger('origins-test', 'info', sink) },
  );
});
afterAll(async () => {
  await proxy?.close();
  for (const server of servers) server.close();
  await lab?.close();
});

function get(host: string, headers: Record<string, string> = {}): Promise<{ status: number; code: unknown; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = https.get({ host: '127.0.0.1', port: proxy.ports[0], servername: host, ca, headers: { host, ...headers }, agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: res.headers['x-keyedge-error'], body }));
      res.on('error', (err) => resolve({ error: err.message }));
      res.on('aborted', () => resolve({ error: 'aborted' }));
    });
    req.on('error', (err) => resolve({ error: err.message }));
  });
}

describe('failing origins', () => {
  it('answers 502 when the origin refuses the connection', async () => {
    expect(await get('down.lab.test')).toMatchObject({ status: 502, code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE' });
  });

  it('answers 504 when the origin does not answer in time', async () => {
    const started = Date.now();
    expect(await get('slow.lab.test')).toMatchObject({ status: 504, code: 'KEYEDGE_HTTP_ORIGIN_TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('cuts the answer cleanly when the origin resets mid-response, and logs why', async () => {
    const result = await get('reset.lab.test');
    expect('error' in result || (result as { body: string }).body.length < 10_000).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(lines.some((l) => l.code === 'KEYEDGE_HTTP_ORIGIN_ABORTED' && l.domain === 'reset.lab.test')).toBe(true);
  });

  it('keeps serving healthy domains', async () => {
    expect(await get('ok.lab.test')).toMatchObject({ status: 200 });
  });

  it('sets X-Forwarded-* and Forwarded itself, dropping what the client claimed', async () => {
    const result = await get('ok.lab.test', { 'x-forwarded-for': '203.0.113.9', forwarded: 'for=203.0.113.9' });
    expect(result).toMatchObject({ status: 200 });
    const seen = JSON.parse((result as { body: string }).body) as { host: string; xff: string; forwarded: string };
    // RFC 7239 §4: for, proto and host as the proxy saw them; the origin gets the Host the client sent.
    expect(seen).toEqual({ host: 'ok.lab.test', url: '/', xff: '127.0.0.1', forwarded: 'for=127.0.0.1;proto=https;host="ok.lab.test"' });
  });
});
