/**
 * The proxy's admin HTTP listener (loopback by default), served by the
 * cluster primary:
 *   GET /metrics  every worker's metrics, summed (prom-client AggregatorRegistry)
 *   GET /healthz  200 while the primary runs
 *   GET /readyz   200 once every worker has loaded its certificates and the
 *                 key server answers a ping; 503 with the reason otherwise.
 *                 A fleet node whose etcd is away answers 200 "degraded: ..."
 *                 (with x-keyedge-degraded: store): it serves its last good state and
 *                 should keep its traffic, but refuses changes; so does a node
 *                 with a store entry refused and no version of it serving
 *                 (x-keyedge-degraded: certificates), unless no certificate
 *                 serves at all: every handshake would fail, so 503
 *   GET /config   the running configuration as JSON (it holds no secrets:
 *                 PINs and keys are never in a proxy config; paths are shown)
 *   GET /certs    every certificate entry: names, serial, issuer, notAfter,
 *                 key id, loaded-at; refused entries with the reason
 * and, with `Authorization: Bearer <token>` (RFC 6750 §2.1; the token is
 * read from admin.tokenFile on each request, so it can be rotated live):
 *   POST /reload, POST /certs/reload   reload the config file and the store
 *   PUT /certs/:name                   a PEM chain for a store entry: validated,
 *                                      then written to the store and reloaded
 *                                      (200 once it serves; 202 when stored but
 *                                      the reload kept what served before)
 *   POST /tickets/rotate               a new session-ticket key; answers once
 *                                      every worker encrypts with it (never a key);
 *                                      in a fleet, for every node
 *   PUT /routes/:name, DELETE /routes/:name   (fleet only) a route, as in the
 *                                      config's `domains[]`, kept in etcd
 *   POST /acme/issue                   {"domains": [...], "name"?, "replaceDomains"?}:
 *                                      a managed certificate from the ACME CA; answers
 *                                      once it serves (502 KEYEDGE_ERR_ACME otherwise;
 *                                      409 KEYEDGE_ERR_ACME_DOMAINS when it would drop
 *                                      names of the entry, acme/domain-lists.ts)
 *   POST /acme/renew/:name             renew a managed certificate now
 * At most MAX_ADMIN_CONNECTIONS connections are open at once; a newcomer at
 * the cap closes the one waiting longest with no answer in progress (a head
 * still arriving, idle between requests), or else the one whose client has
 * left its answer unsent longest, past STALLED_MS; only when there is none is
 * the newcomer closed; past MAX_UNSENT_BYTES of answers left unsent across
 * them, the one holding the most is closed (keyserver/shared/admin-connections.ts).
 * GET /config and GET /certs are rendered once per change (admin-http.ts jsonOnce).
 * Refusals answer 4xx with the reason as JSON; the running state is kept:
 *   400 KEYEDGE_ERR_CERT_STORE       not an entry name (`..`, `.hidden`, a `/`)
 *   409 KEYEDGE_ERR_CERT_EXISTS      the name is a certificate of the config file
 *   409 KEYEDGE_ERR_CERT_LINKED      the entry's chain or metadata is a symlink: another tool's (certs/store.ts)
 *   409 KEYEDGE_ERR_STORE_CONFLICT   in a fleet, another node wrote the entry while this upload was validated; with
 *                                    the store directory, another writer held the entry's lock (store-lock.ts): retry
 *   413 KEYEDGE_HTTP_BODY_TOO_LARGE  the body is over its route's limit (MAX_UPLOAD_BYTES; an ACME issue's, ACME_ISSUE_BYTES)
 *   413 KEYEDGE_ERR_STORE_TOO_LARGE  the value is past etcd's request limit: no retry helps
 *   422 KEYEDGE_ERR_CERTIFICATE      the chain is refused (with `reason`)
 *   422 KEYEDGE_ERR_CONFIG           the route is refused (what was expected)
 *   503 KEYEDGE_ERR_STORE_UNAVAILABLE  the fleet's etcd is unreachable: retry later
 *   503 KEYEDGE_ERR_CERT_STORE_GONE    the store directory is gone, or replaced by an empty one (by any, during the upload): retry once it is back
 * A body over the limit is read and dropped up to a bound (readBody), so the
 * client sees the 413 rather than a reset of a connection it still writes to,
 * as nginx's lingering close does; past the bound, the 413 goes out with
 * `connection: close`. With `Expect: 100-continue`, `100 Continue` goes only
 * to a change the control API takes and would not refuse before its body: a
 * read, or any change without a control API, gets its answer at once, a change
 * without the token its 401/403 (checked first), a declared body over the limit
 * its 413, and the connection ends.
 *
 * A method the resource does not take is answered 405 with `Allow` naming those
 * it takes (RFC 9110 §15.5.6), a change's only after its token is checked; a
 * path that is no resource, 404 (admin-routes.ts).
 *
 * This file is the listener and its routing: the token check (admin-auth.ts),
 * then the resource and its method (admin-routes.ts, the one table of both),
 * which answers with a change (admin-changes.ts, admin-acme.ts) or a read
 * (admin-reads.ts);
 * bodies are bounded by admin-body.ts; what it reads and changes is
 * admin-sources.ts, supplied by the primary (cluster-admin.ts).
 */
import http from 'node:http';
import { capAdminConnections } from '../keyserver/shared/admin-connections.js';
import { answerUpgradesAsRequests } from '../keyserver/shared/admin-upgrade.js';
import { listen } from '../keyserver/shared/listen.js';
import { authorisationFailure, CHANGES, refuse } from './admin-auth.js';
import { boundDrain, declaredLength, hasBody, readBody, tooLarge } from './admin-body.js';
import { adminResource, notAllowed } from './admin-routes.js';
import type { AdminSources } from './admin-sources.js';

export type { AdminControl, AdminSources } from './admin-sources.js';

/** A request's head arrives at once from any scraper or client; a whole upload (MAX_UPLOAD_BYTES) within a minute. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;
const TIMEOUT_CHECK_MS = 1_000;
/**
 * Connections the admin listener holds at once. Each is a file descriptor of the primary, which every worker depends
 * on: without a cap, one client opening thousands could take the descriptors the primary needs for its workers, the
 * store and the key server. Scrapers, probes and an operator keep a few open; this is far above that and far below the
 * descriptor limit. At the cap a newcomer closes the connection waiting longest with nothing in progress: refusing the
 * newcomer let a client holding 64 heads sent a byte at a time shut out every readiness probe and scraper.
 */
export const MAX_ADMIN_CONNECTIONS = 64;

export function startProxyAdmin(host: string, port: number, sources: AdminSources): Promise<http.Server> {
  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    // Requests Node read with one that closed their connection (admin-connections.ts): nobody reads their answers.
    if (req.socket.destroyed) return;
    boundDrain(req, res);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const control = sources.control;
    const method = req.method ?? '';
    const resource = adminResource(path, sources);
    const allowed = resource.allowed;
    if (CHANGES.has(method)) {
      // Without a control API no change exists (404, or 405 naming a read's methods): counted all the same, or 1,800 of
      // them in one write were all answered, whatever MAX_ANSWERS says.
      if (control === undefined) return connections.answering(req, res) ? notAllowed(res, allowed) : undefined;
      const denied = authorisationFailure(req, control.tokenFile);
      if (denied !== undefined) {
        // Counted toward MAX_ANSWERS, but not held: its connection stays one a newcomer at the cap may close.
        if (!connections.answering(req, res, false)) return;
        if (!hasBody(req)) return refuse(res, denied, false);
        // A body nobody may send is dropped as one over the limit is (readBody): up to DISCARD_BYTES / DISCARD_MS, so the
        // answer reaches a client that finished writing, then the connection ends. Node would otherwise read and drop it
        // to its end, however long (an endless chunked one for ever), to keep the connection.
        void readBody(req, 0).then((body) => refuse(res, denied, typeof body !== 'string' && body.close));
        return;
      }
      if (!connections.answering(req, res)) return;
      // The token first (a change's 401 or 403 says nothing of the routes, README lists them), then the method.
      if (!allowed.includes(method)) return notAllowed(res, allowed);
      return resource.answer(req, res);
    }
    if (!connections.answering(req, res)) return;
    if (!allowed.includes(method)) return notAllowed(res, allowed);
    return resource.answer(req, res);
  };
  // A head has HEADERS_TIMEOUT_MS, a whole request (an upload) REQUEST_TIMEOUT_MS; a slow client (slowloris) held a
  // connection of the primary for Node's 60 s and 300 s, checked every 30 s.
  const server = http.createServer(
    { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: TIMEOUT_CHECK_MS },
    handle,
  );
  const connections = capAdminConnections(server, MAX_ADMIN_CONNECTIONS);
  answerUpgradesAsRequests(server, connections.busy);
  // Expect: 100-continue (RFC 9110 §10.1.1): the 100 invites the body, so it goes only to a change that reads one
  // (admin-routes.ts readsBody) and is not refused before it. Every change's token is checked first: its 401 or 403 at once, so that no
  // client without the token is invited to send up to the body limit, nor left waiting for a body it holds back for the
  // 100. Then a declared body over the limit gets its 413. Anything else gets its final answer at once, and the
  // connection ends after it if a body was declared (the client may send it anyway once it tires of waiting; it is not
  // read).
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const control = sources.control;
    const denied = control !== undefined && CHANGES.has(req.method ?? '') ? authorisationFailure(req, control.tokenFile) : undefined;
    if (denied !== undefined) return refuse(res, denied, true);
    const resource = adminResource((req.url ?? '/').split('?')[0] ?? '/', sources);
    if (control === undefined || !resource.readsBody(req.method ?? '')) {
      if (hasBody(req)) res.shouldKeepAlive = false;
      return handle(req, res);
    }
    // The route's own limit (admin-routes.ts): an ACME issue's is below an upload's, and was invited up to the upload's.
    const limit = resource.bodyLimit(req.method ?? '');
    if (declaredLength(req) > limit) return tooLarge(res, true, limit);
    res.writeContinue();
    handle(req, res);
  });
  return listen(server, { host, port });
}

/** Whether `host` is a loopback address or name: an admin API elsewhere answers its reads to anyone who reaches it. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(host);
}
