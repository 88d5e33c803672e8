/**
 * The admin API's route table: each resource, the methods it takes and what
 * answers each, given what the primary supplies (no control API: the reads
 * alone; no fleet: no routes; no ticket rotation: no /tickets/rotate). The
 * one table drives the dispatch (admin.ts), the `Allow` of a 405 and which
 * change reads a body and how much (for `Expect: 100-continue`), so that they cannot
 * disagree: a method `Allow` names is one that is answered, and the other way
 * round.
 *
 * A request whose method its resource does not take is answered 405 with
 * `Allow` naming these (RFC 9110 §15.5.6: a 405 MUST carry it, §10.2.1);
 * a path that is no resource, 404 whatever the method.
 */
import type http from 'node:http';
import { ACME_ISSUE_BYTES, answerAcme } from './admin-acme.js';
import { MAX_UPLOAD_BYTES } from './admin-body.js';
import { answerDeleteRoute, answerPutRoute, answerReload, answerRotate, answerUpload, uploadNameRefusal } from './admin-changes.js';
import { text } from './admin-http.js';
import { answerCertificates, answerConfig, answerHealth, answerMetrics, answerReady } from './admin-reads.js';
import type { AdminControl, AdminSources } from './admin-sources.js';

/** A request to a resource: `name` is the path's capture (still URL-encoded: admin-http.ts entryName), or ''. */
interface Asked<S> {
  readonly req: http.IncomingMessage;
  readonly res: http.ServerResponse;
  readonly path: string;
  readonly name: string;
  readonly source: S;
}

/** A method a resource takes. */
interface Method<S> {
  readonly method: string;
  readonly answer: (asked: Asked<S>) => void;
  /** Whether `source` has the part that answers it; default: always. Without it, the method is not taken. */
  readonly offered?: (source: S) => boolean;
  /**
   * Whether the answer reads a body (`Expect: 100-continue` invites one only then), given the path's capture `name`
   * (still URL-encoded); default: no. A change that refuses before its body (an upload to a refused name) reads none.
   */
  readonly readsBody?: (source: S, name: string) => boolean;
  /** The body it reads at most (413 past it; `Expect: 100-continue` with a declared length past it gets the 413); default MAX_UPLOAD_BYTES. */
  readonly bodyLimit?: number;
}

/** A resource by its path; its methods in Allow's order (reads, then changes). A control resource exists only with a control API. */
type Route =
  | { readonly path: RegExp; readonly control: false; readonly methods: readonly Method<AdminSources>[] }
  | { readonly path: RegExp; readonly control: true; readonly methods: readonly Method<AdminControl>[] };

/** GET and HEAD, answered alike (Node leaves out a HEAD's body). */
function reads<S>(answer: (asked: Asked<S>) => void): Method<S>[] {
  return [
    { method: 'GET', answer },
    { method: 'HEAD', answer },
  ];
}

const RELOAD: Method<AdminControl> = { method: 'POST', answer: ({ res, source }) => answerReload(res, source) };
const ACME: Method<AdminControl> = { method: 'POST', answer: ({ req, res, path, source }) => answerAcme(req, res, path, source) };

/** Every resource, the first whose path matches taken: /certs/reload before /certs/:name. */
const ROUTES: readonly Route[] = [
  { path: /^\/metrics$/, control: false, methods: reads(({ res, source }) => answerMetrics(res, source)) },
  { path: /^\/healthz$/, control: false, methods: reads(({ res }) => answerHealth(res)) },
  { path: /^\/readyz$/, control: false, methods: reads(({ res, source }) => answerReady(res, source)) },
  { path: /^\/config$/, control: false, methods: reads(({ res, source }) => answerConfig(res, source)) },
  { path: /^\/certs$/, control: true, methods: reads(({ res, source }) => answerCertificates(res, source)) },
  { path: /^\/reload$/, control: true, methods: [RELOAD] },
  // Also the upload of an entry named `reload` (PUT /certs/:name).
  {
    path: /^\/certs\/reload$/,
    control: true,
    methods: [
      RELOAD,
      {
        method: 'PUT',
        answer: ({ req, res, source }) => answerUpload(req, res, source, 'reload'),
        readsBody: (c) => uploadNameRefusal(c, 'reload') === undefined,
      },
    ],
  },
  // Any name: a refused one gets its 400.
  {
    path: /^\/certs\/(.+)$/,
    control: true,
    methods: [
      {
        method: 'PUT',
        answer: ({ req, res, name, source }) => answerUpload(req, res, source, name),
        // `..`, `.hidden`, a name of the config file's: refused before the body, so not invited to send it.
        readsBody: (c, name) => uploadNameRefusal(c, name) === undefined,
      },
    ],
  },
  {
    path: /^\/tickets\/rotate$/,
    control: true,
    methods: [{ method: 'POST', answer: ({ res, source }) => answerRotate(res, source.rotateTicketKeys!), offered: (c) => c.rotateTicketKeys !== undefined }],
  },
  {
    path: /^\/routes\/([^/]+)$/,
    control: true,
    methods: [
      {
        method: 'PUT',
        answer: ({ req, res, name, source }) => answerPutRoute(req, res, source.putRoute!, name),
        offered: (c) => c.putRoute !== undefined,
        readsBody: () => true,
      },
      { method: 'DELETE', answer: ({ res, name, source }) => answerDeleteRoute(res, source.deleteRoute!, name), offered: (c) => c.deleteRoute !== undefined },
    ],
  },
  // Without ACME configured, its 400 says so (admin-acme.ts).
  { path: /^\/acme\/issue$/, control: true, methods: [{ ...ACME, readsBody: (c) => c.acmeIssue !== undefined, bodyLimit: ACME_ISSUE_BYTES }] },
  { path: /^\/acme\/renew\//, control: true, methods: [ACME] },
];

/** A resource as the primary's sources offer it. */
export interface AdminResource {
  /** The methods it takes, in Allow's order; empty when there is no such resource. */
  readonly allowed: readonly string[];
  /** Answers `req` (its method one `allowed` names; a change's token already checked: admin-auth.ts). */
  answer(req: http.IncomingMessage, res: http.ServerResponse): void;
  /** Whether the answer to `method` reads a body: a certificate upload, a route (fleet), an ACME issue. */
  readsBody(method: string): boolean;
  /** The body the answer to `method` reads at most: what `Expect: 100-continue` is checked against. */
  bodyLimit(method: string): number;
}

const NONE: AdminResource = {
  allowed: [],
  answer: (_req, res) => text(res, 404, 'not found\n'),
  readsBody: () => false,
  bodyLimit: () => MAX_UPLOAD_BYTES,
};

/** The resource at `path` (no query), as `sources` offer it. */
export function adminResource(path: string, sources: AdminSources): AdminResource {
  for (const route of ROUTES) {
    const match = route.path.exec(path);
    if (match === null) continue;
    if (!route.control) return offer(route.methods, sources, path, match[1] ?? '');
    return sources.control === undefined ? NONE : offer(route.methods, sources.control, path, match[1] ?? '');
  }
  return NONE;
}

function offer<S>(methods: readonly Method<S>[], source: S, path: string, name: string): AdminResource {
  const taken = methods.filter((m) => m.offered?.(source) ?? true);
  const find = (method: string): Method<S> | undefined => taken.find((m) => m.method === method);
  return {
    allowed: taken.map((m) => m.method),
    answer: (req, res) => {
      const method = find(req.method ?? '');
      if (method === undefined) return NONE.answer(req, res);
      method.answer({ req, res, path, name, source });
    },
    readsBody: (method) => find(method)?.readsBody?.(source, name) ?? false,
    bodyLimit: (method) => find(method)?.bodyLimit ?? MAX_UPLOAD_BYTES,
  };
}

/** The answer to a method `allowed` lacks: 405 with Allow, or 404 when there is no such resource (nothing allowed). */
export function notAllowed(res: http.ServerResponse, allowed: readonly string[]): void {
  if (allowed.length === 0) return text(res, 404, 'not found\n');
  res.writeHead(405, { 'content-type': 'text/plain; charset=utf-8', allow: allowed.join(', ') }).end('method not allowed\n');
}
