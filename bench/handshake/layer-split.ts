/**
 * Splits a V8 CPU profile (`node --cpu-prof`) of a proxy worker into the layers of issue 12's table: accept,
 * ClientHello, handshake, session tickets, key hop, HTTP parse, routing, forward, answer, log/metrics, plus
 * connection close, GC, native work with no JavaScript frame above it, and the rest. Pure: a profile in, sampled µs
 * per layer out.
 *
 * How a sample is placed: its stack is walked from the leaf towards the root and the first frame a rule claims
 * decides (so pino called from the answer's 'finish' is log/metrics, a socket write under undici is forward). Frames
 * of generic machinery (events, streams, ticks, timers, node:net sockets) claim nothing and are walked through. The
 * CertificateVerify sign of an in-memory key runs inside OpenSSL under `initRead` (node:_tls_wrap) and so lands in
 * "handshake"; a keyless sign does too (the RPC is native, under the same frame): V8 cannot tell them apart, which is
 * why the key hop is measured apart (bench/handshake, keyless − in memory).
 *
 * Time per sample is the gap to the next one (harness/cpuprofile.ts); "(idle)" is left out. Sampling is by wall clock
 * on the main thread: under contention a preempted thread's wait is charged where it was preempted, which is in
 * proportion to where it runs, so shares hold better than absolute µs.
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

/** µs on the monotonic clock (process.hrtime.bigint() / 1000n in any process). */
export type Window = ProfileWindow;

export interface LayerSplit {
  readonly busyUs: number;
  readonly byLayer: Readonly<Record<Layer, number>>;
  /** The costliest frames (self time) per layer, for reading the table. */
  readonly topFrames: Readonly<Record<Layer, readonly { frame: string; us: number }[]>>;
}

const has = (url: string, ...parts: string[]): boolean => parts.some((p) => url.includes(p));

/** The layer a frame claims, or undefined for generic machinery. */
export function layerOf(frame: Pick<CallFrame, 'functionName' | 'url'>): Layer | undefined {
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
  if (has(url, '/bench/handshake/floor.js')) return 'answer (writeHead/write/end to the client)';
  if (url === 'node:_http_outgoing') return 'answer (writeHead/write/end to the client)';
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

/** Sampled µs per layer of the profile at `path`, over the samples inside `window`. */
export function splitProfile(path: string, window: Window): LayerSplit {
  const { profile, byId, parent } = readProfile(path);
  const layerOfNode = new Map<number, Layer>();
  const resolveNode = (id: number): Layer => {
    const known = layerOfNode.get(id);
    if (known !== undefined) return known;
    let layer: Layer = 'other JS (event loop, streams)';
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const claimed = layerOf(byId.get(at)!.callFrame);
      if (claimed !== undefined) {
        layer = claimed;
        break;
      }
    }
    layerOfNode.set(id, layer);
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
    if (at < window.fromUs || at > window.toUs) continue;
    const leaf = byId.get(profile.samples[i]!);
    if (leaf === undefined || leaf.callFrame.functionName === '(idle)') continue;
    busyUs += dt;
    const layer = resolveNode(leaf.id);
    byLayer[layer] += dt;
    const key = `${leaf.callFrame.functionName || '(anonymous)'} ${leaf.callFrame.url.replace(/^.*\/(node_modules|dist)\//, '')}`;
    const perLayer = frames.get(layer)!;
    perLayer.set(key, (perLayer.get(key) ?? 0) + dt);
  }
  const topFrames = Object.fromEntries(
    LAYERS.map((l) => [
      l,
      [...frames.get(l)!.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 5)
        .map(([frame, us]) => ({ frame, us })),
    ]),
  ) as Record<Layer, { frame: string; us: number }[]>;
  return { busyUs, byLayer, topFrames };
}
