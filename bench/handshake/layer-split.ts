/**
 * Splits a V8 CPU profile (`node --cpu-prof`) of a proxy worker into the layers of issue 12's table (LAYERS). Pure: a
 * profile in, sampled µs per layer out. A sample's stack is walked from the leaf towards the root and the first frame
 * a rule claims decides (pino called from the answer's 'finish' is log/metrics, a socket write under undici is
 * forward); generic machinery (events, streams, ticks, timers, node:net sockets) claims nothing. A CertificateVerify
 * sign runs natively under `initRead` (node:_tls_wrap) and lands in "handshake": the key hop is measured apart
 * (keyless − in memory). Time per sample is the gap to the next one; "(idle)" is left out. Sampling is by wall clock,
 * so under contention shares hold better than absolute µs.
 */
import { type CallFrame, type ProfileWindow, readProfile } from '../harness/cpuprofile.js';

export const LAYERS = [
  'accept',
  'ClientHello + context choice',
  'TLS handshake (JS side and OpenSSL under it)',
  'session tickets (ticket-key callback)',
  'key hop',
  'HTTP parse + connection setup',
  'routing (handler)',
  'forward (undici, origin socket)',
  'answer (writeHead/write/end to the client)',
  'log/metrics',
  'connection close',
  'GC',
  'native, no JS frame (libuv, OpenSSL on reads)',
  'other JS (event loop, streams)',
] as const;
export type Layer = (typeof LAYERS)[number];

/** Sampled µs per layer, and the costliest frame (self time) of each layer, for reading the table. */
export type LayerSplit = ReturnType<typeof splitProfile>;

const has = (url: string, ...parts: string[]): boolean => parts.some((p) => url.includes(p));

/** The layer a frame claims, or undefined for generic machinery. */
function layerOf(frame: Pick<CallFrame, 'functionName' | 'url'>): Layer | undefined {
  const { functionName: name, url } = frame;
  if (name === '(garbage collector)') return 'GC';
  if (name === '(program)') return 'native, no JS frame (libuv, OpenSSL on reads)';
  if (has(url, '/pino/', '/pino-std-serializers/', 'sonic-boom', 'prom-client', 'fast-redact', 'safe-stable-stringify', 'on-exit-leak-free'))
    return 'log/metrics';
  if (has(url, '/proxy/http/access.js', '/proxy/metrics.js', '/keyserver/shared/log.js')) return 'log/metrics';
  if (has(url, '/proxy/keyless/', '/proxy/native/')) return 'key hop';
  if (has(url, '/proxy/tls/tickets.js') || name === 'onticketkeycallback') return 'session tickets (ticket-key callback)';
  if (has(url, '/undici/', '/proxy/http/forward', '/proxy/http/origin', '/proxy/http/body.js', '/proxy/http/queued.js', '/proxy/http/send-stall.js'))
    return 'forward (undici, origin socket)';
  if (has(url, '/proxy/http/handler.js', '/proxy/http/target.js', '/proxy/http/expect.js', '/proxy/http/trusted-peers.js', '/proxy/tls/names.js'))
    return 'routing (handler)';
  if (has(url, '/proxy/http/server.js', '/proxy/tls/connection.js')) return 'HTTP parse + connection setup';
  if (has(url, '/proxy/tls/client-hello.js')) return 'ClientHello + context choice';
  if (has(url, '/proxy/tls/listener.js')) return /accept|reject/i.test(name) ? 'accept' : 'ClientHello + context choice';
  if (has(url, '/proxy/tls/connection-limits.js')) return 'accept';
  if (has(url, '/proxy/tls/')) return 'TLS handshake (JS side and OpenSSL under it)';
  if (has(url, '/bench/handshake/floor.js') || url === 'node:_http_outgoing') return 'answer (writeHead/write/end to the client)';
  if (url === 'node:_http_server') {
    if (/^(writeHead|_writeRaw|end|write|resOnFinish|ServerResponse|_finish|detachSocket|assignSocket|onServerResponseClose|emitCloseNT)/.test(name))
      return 'answer (writeHead/write/end to the client)';
    if (/^(socketOnClose|abortIncoming|socketOnEnd|onSocketEnd)/.test(name)) return 'connection close';
    return 'HTTP parse + connection setup';
  }
  if (url === 'node:_http_common' || url === 'node:_http_incoming') return 'HTTP parse + connection setup';
  if (url === 'node:_tls_wrap' || url === 'node:tls' || url.startsWith('node:internal/tls')) {
    if (/destroy|close|onSocketClose|onReadableStreamEnd|_final/i.test(name)) return 'connection close';
    if (/^(_writeGeneric|_writev|_write)$/.test(name)) return undefined;
    return 'TLS handshake (JS side and OpenSSL under it)';
  }
  if (url === 'node:net') {
    if (name === 'onconnection') return 'accept';
    if (/destroy|_final|onReadableStreamEnd|emitCloseNT|onStreamRead.*End|Socket\._destroy/.test(name)) return 'connection close';
  }
  return undefined;
}

/** Sampled µs per layer of the profile at `path`, over the samples inside `windows` (µs on the monotonic clock, as process.hrtime). */
export function splitProfile(path: string, windows: readonly ProfileWindow[]) {
  const { profile, byId, parent } = readProfile(path);
  const layerOfNode = new Map<number, Layer>();
  /** The layer of the nearest frame that claims one, from the node up to the root. */
  const resolveNode = (id: number): Layer => {
    let layer = layerOfNode.get(id);
    if (layer === undefined) {
      const up = parent.get(id);
      layer = layerOf(byId.get(id)!.callFrame) ?? (up === undefined ? 'other JS (event loop, streams)' : resolveNode(up));
      layerOfNode.set(id, layer);
    }
    return layer;
  };
  const byLayer = Object.fromEntries(LAYERS.map((l) => [l, 0])) as Record<Layer, number>;
  const frames = new Map<Layer, Map<string, number>>(LAYERS.map((l) => [l, new Map()]));
  let busyUs = 0;
  let at = profile.startTime;
  const n = profile.samples.length;
  for (let i = 0; i < n; i++) {
    const dt = i + 1 < n ? Math.max(0, profile.timeDeltas[i + 1]!) : 0;
    at += profile.timeDeltas[i] ?? 0;
    if (!windows.some((w) => at >= w.fromUs && at <= w.toUs)) continue;
    const leaf = byId.get(profile.samples[i]!);
    if (leaf === undefined || leaf.callFrame.functionName === '(idle)') continue;
    busyUs += dt;
    const layer = resolveNode(leaf.id);
    byLayer[layer] += dt;
    const key = `${leaf.callFrame.functionName || '(anonymous)'} ${leaf.callFrame.url.replace(/^.*\/(node_modules|dist)\//, '')}`;
    const perLayer = frames.get(layer)!;
    perLayer.set(key, (perLayer.get(key) ?? 0) + dt);
  }
  const top = (l: Layer) => [...frames.get(l)!].reduce<[string, number]>((a, b) => (b[1] > a[1] ? b : a), ['–', 0])[0];
  return { busyUs, byLayer, topFrame: Object.fromEntries(LAYERS.map((l) => [l, top(l)])) as Record<Layer, string> };
}
