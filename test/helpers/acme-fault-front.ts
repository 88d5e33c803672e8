/**
 * A fault-injecting HTTPS front for pebble: it relays every request to the
 * real CA with the client's Host (pebble builds its URLs from it, so the
 * client keeps coming through the front; any absolute URL of pebble's own is
 * rewritten too) unless told to misbehave: `down`
 * (connections cut), `slow` (answers held for `slowMs`), `badNonce` (every
 * POST refused with a fresh nonce, RFC 8555 §6.5), `rateLimited` (newOrder
 * refused with 429 and Retry-After, §6.6), `huge` (the certificate download
 * answered with `hugeBytes` of PEM, counted in `hugeSent` as the client takes
 * them), `stuckPending` (an order that became ready is answered as still
 * pending, with `Retry-After: 0`), `reuseValid` (newOrder answered with
 * the order at `reusePath` as last seen, as a CA reusing an existing valid
 * order does, RFC 8555 §7.4), `ariDue` (the directory lists a renewalInfo
 * URL, RFC 9773, which pebble 2.4 has not, answering every certificate a
 * window already past: each is due for renewal at once), `padAuthz` (a new
 * order's authorizations followed by `padCount` more of the front's own, each
 * request for one counted in `faults.padded`), `foreignAuthz` (every
 * authorization answered pending for `foreignName`, its challenges pending),
 * `slowFinalize` (a finalize request held `slowMs` before it is relayed).
 * Pebble itself has no rate limits.
 * `openConnections()` counts the clients' connections open to the front.
 */
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';

export type FaultMode =
  | 'pass'
  | 'down'
  | 'slow'
  | 'badNonce'
  | 'rateLimited'
  | 'huge'
  | 'stuckPending'
  | 'reuseValid'
  | 'ariDue'
  | 'padAuthz'
  | 'foreignAuthz'
  | 'slowFinalize';

export interface FaultFront {
  readonly directory: string;
  mode: FaultMode;
  slowMs: number;
  retryAfterSeconds: number;
  hugeBytes: number;
  /** Bytes of the huge answer the client took before it stopped reading. */
  hugeSent: number;
  /** Requests answered with a fault, by mode. */
  readonly faults: Record<string, number>;
  /**
   * Each authorization deactivation relayed (RFC 8555 §7.5.2), each attempt: its URL's path and the CA's answer,
   * `200 deactivated`, or a problem's status and type (`400 badNonce`, which the client tries again).
   */
  readonly deactivations: { readonly path: string; readonly answer: string }[];
  /** For `padAuthz`: how many authorizations of the front's own a new order gets after its own. */
  padCount: number;
  /** For `foreignAuthz`: the name every authorization is said to be for. */
  foreignName: string;
  /** For `reuseValid`: the path of an order (`/my-order/…`) the front has relayed. */
  reusePath: string;
  /** Each order's last answer relayed, by its path. */
  readonly orders: Map<string, string>;
  openConnections(): Promise<number>;
  close(): Promise<void>;
}

/** `keepAliveMs`: how long the front keeps an idle connection (and hints it to the client, Keep-Alive: timeout). */
export async function startFaultFront(pebbleDirectory: string, certFile: string, keyFile: string, keepAliveMs = 5_000): Promise<FaultFront> {
  const upstream = new URL(pebbleDirectory).origin;
  const ca = readFileSync(certFile, 'utf8');
  let self = '';
  const rewrite = (text: string): string => text.split(upstream).join(self);
  const front: FaultFront = {
    directory: '',
    mode: 'pass',
    slowMs: 0,
    retryAfterSeconds: 30,
    hugeBytes: 0,
    hugeSent: 0,
    faults: {},
    deactivations: [],
    reusePath: '',
    padCount: 0,
    foreignName: '',
    orders: new Map(),
    openConnections: () => new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n)))),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const problem = (res: import('node:http').ServerResponse, status: number, type: string, headers: Record<string, string> = {}): void => {
    const body = JSON.stringify({ type: `urn:ietf:params:acme:error:${type}`, detail: `injected ${type}` });
    res.writeHead(status, { 'content-type': 'application/problem+json', 'replay-nonce': `fault${Date.now()}`, ...headers }).end(body);
  };
  const server = https.createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const mode = front.mode;
      const count = (): void => void (front.faults[mode] = (front.faults[mode] ?? 0) + 1);
      if (req.url?.includes('/authZ/padded-')) front.faults.padded = (front.faults.padded ?? 0) + 1;
      if (mode === 'down') {
        count();
        req.socket.destroy();
        return;
      }
      if (mode === 'badNonce' && req.method === 'POST') {
        count();
        return problem(res, 400, 'badNonce');
      }
      if (mode === 'rateLimited' && req.method === 'POST' && req.url?.includes('order-plz')) {
        count();
        return problem(res, 429, 'rateLimited', { 'retry-after': String(front.retryAfterSeconds) });
      }
      if (mode === 'ariDue' && req.method === 'GET' && req.url?.startsWith('/renewal-info/')) {
        count();
        const suggestedWindow = { start: new Date(Date.now() - 2 * 86_400_000).toISOString(), end: new Date(Date.now() - 86_400_000).toISOString() };
        res.writeHead(200, { 'content-type': 'application/json', 'retry-after': '21600' }).end(JSON.stringify({ suggestedWindow }));
        return;
      }
      if (mode === 'huge' && req.method === 'POST' && req.url?.includes('/certZ/')) {
        count();
        res.writeHead(200, { 'content-type': 'application/pem-certificate-chain', 'replay-nonce': `fault${Date.now()}` });
        const chunk = Buffer.from(`-----BEGIN CERTIFICATE-----\n${'A'.repeat(64)}\n`.repeat(1024));
        const more = (): void => {
          while (front.hugeSent < front.hugeBytes && !res.destroyed) {
            front.hugeSent += chunk.length;
            if (!res.write(chunk)) return void res.once('drain', more);
          }
          res.end();
        };
        res.on('close', () => undefined);
        return more();
      }
      const relay = (): void => {
        const out = https.request(
          `${upstream}${req.url}`,
          // The client's Host goes on: pebble builds its URLs (and checks the JWS `url`) from it.
          { method: req.method, headers: req.headers, ca },
          (answer) => {
            const body: Buffer[] = [];
            answer.on('data', (c: Buffer) => body.push(c));
            answer.on('end', () => {
              const headers: Record<string, string | string[]> = {};
              for (const [name, value] of Object.entries(answer.headers)) {
                if (value === undefined || name === 'content-length' || name === 'transfer-encoding') continue;
                headers[name] = Array.isArray(value) ? value.map(rewrite) : rewrite(value);
              }
              let text = rewrite(Buffer.concat(body).toString('utf8'));
              if (mode === 'stuckPending' && req.url?.includes('/my-order/') && /"status":\s*"ready"/.test(text)) {
                count();
                text = text.replace(/"status":\s*"ready"/, '"status": "pending"');
                headers['retry-after'] = '0';
              }
              if (req.url?.startsWith('/my-order/')) front.orders.set(req.url, text);
              if (mode === 'ariDue' && req.method === 'GET' && req.url === new URL(pebbleDirectory).pathname)
                text = JSON.stringify({ ...(JSON.parse(text) as object), renewalInfo: `${self}/renewal-info` });
              // Only a new order pebble made (201) is put in place: its badNonce refusals (5 %) pass as they are, retried.
              if (mode === 'reuseValid' && req.url?.includes('order-plz') && answer.statusCode === 201 && front.orders.has(front.reusePath)) {
                count();
                text = front.orders.get(front.reusePath) ?? '';
                headers.location = `${self}${front.reusePath}`;
              }
              if (mode === 'padAuthz' && req.url?.includes('order-plz') && answer.statusCode === 201) {
                count();
                const order = JSON.parse(text) as { authorizations: string[] };
                const padded = Array.from({ length: front.padCount }, (_, i) => `${self}/authZ/padded-${i}`);
                text = JSON.stringify({ ...order, authorizations: [...order.authorizations, ...padded] });
              }
              if (mode === 'foreignAuthz' && req.url?.startsWith('/authZ/') && answer.statusCode === 200) {
                count();
                const authz = JSON.parse(text) as { identifier: { type: string; value: string }; challenges: { status: string }[] };
                text = JSON.stringify({
                  ...authz,
                  status: 'pending',
                  identifier: { ...authz.identifier, value: front.foreignName },
                  challenges: authz.challenges.map((c) => ({ ...c, status: 'pending' })),
                });
              }
              if (deactivating(Buffer.concat(chunks))) {
                let status: unknown;
                try {
                  // An authorization's status, or a problem document's type (pebble's badNonce, 5 % of requests, retried).
                  const parsed = JSON.parse(text) as { status?: unknown; type?: unknown };
                  status = typeof parsed.type === 'string' ? parsed.type.replace(/^urn:ietf:params:acme:error:/, '') : parsed.status;
                } catch {
                  // A problem document's or anything else's: the answer says so below.
                }
                front.deactivations.push({ path: req.url ?? '', answer: `${answer.statusCode} ${String(status)}` });
              }
              res.writeHead(answer.statusCode ?? 502, headers).end(text);
            });
          },
        );
        out.on('error', () => res.destroy());
        out.end(Buffer.concat(chunks));
      };
      if (mode === 'slow' || (mode === 'slowFinalize' && req.url?.startsWith('/finalize-order/'))) {
        count();
        setTimeout(relay, front.slowMs);
      } else relay();
    });
  });
  server.keepAliveTimeout = keepAliveMs;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  self = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  (front as { directory: string }).directory = `${self}${new URL(pebbleDirectory).pathname}`;
  return front;
}

/** Whether a JWS request body's payload is `{"status":"deactivated"}` (RFC 8555 §7.5.2). */
function deactivating(body: Buffer): boolean {
  try {
    const payload = (JSON.parse(body.toString('utf8')) as { payload?: string }).payload ?? '';
    return (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { status?: unknown }).status === 'deactivated';
  } catch {
    return false;
  }
}
