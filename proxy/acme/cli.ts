/**
 * `keyedge cert issue [NAME] --domain D [--domain D …]` and `keyedge cert
 * renew NAME` (no --domain, no --replace-domains: a usage error): asking the running proxy (its admin API, with the admin token)
 * to obtain or renew a managed certificate over ACME. The proxy's primary
 * does the work, since it owns the store, the challenges and the reload; the
 * command waits until the certificate serves, or prints why it does not.
 * What it prints is the names the serving certificate covers, and the
 * entry's names before when the issue changed them (acme/domain-lists.ts).
 */
import { readFileSync } from 'node:fs';
import { loadProxyConfig } from '../../config/load.js';
import { KeyedgeError, UsageError } from '../../keyserver/shared/errors.js';
import { AcmeError } from './errors.js';

export async function acmeCertCommand(
  action: 'issue' | 'renew',
  name: string | undefined,
  domains: readonly string[],
  configFile: string | undefined,
  replaceDomains = false,
): Promise<number> {
  if (action === 'renew' && (replaceDomains || domains.length > 0)) {
    // A renewal orders the names the entry records; taking these flags and ignoring them renewed the old list and said "renewed".
    throw new UsageError(
      `cert renew takes no ${replaceDomains ? '--replace-domains' : '--domain'}: it renews the names the entry records; to change them, ` +
        'keyedge cert issue NAME --domain D [--domain D ...] [--replace-domains]',
    );
  }
  const config = loadProxyConfig(configFile);
  if (config.admin === null) throw new UsageError('the proxy config has no admin API ("admin": null): cert issue and renew need it');
  if (action === 'issue' && domains.length === 0) throw new UsageError('give at least one --domain');
  if (action === 'renew' && name === undefined) throw new UsageError('missing NAME: keyedge cert renew NAME');
  let token: string;
  try {
    token = readFileSync(config.admin.tokenFile, 'utf8').trim();
  } catch (err) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_SETUP',
      `cannot read the admin token file ${config.admin.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  // What the proxy accepts (admin-auth.ts; RFC 6750 §2.1, b64token is visible ASCII): anything else could never match, and
  // fetch refused such a header with an error quoting it, token and all, which this command printed.
  if (token !== '' && !/^[!-~]+$/.test(token)) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_SETUP',
      `the admin token file ${config.admin.tokenFile} does not hold one bearer token (visible ASCII characters, no spaces or line breaks)`,
    );
  }
  const host = config.admin.host.includes(':') ? `[${config.admin.host}]` : config.admin.host;
  const path = action === 'issue' ? '/acme/issue' : `/acme/renew/${encodeURIComponent(name ?? '')}`;
  const url = `http://${host}:${config.admin.port}${path}`;
  let response: Response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: action === 'issue' ? JSON.stringify({ domains, ...(name === undefined ? {} : { name }), ...(replaceDomains ? { replaceDomains } : {}) }) : '',
      // An order waits on the CA's validation: minutes at worst, bounded by the proxy's acme.orderTimeoutSeconds.
      signal: AbortSignal.timeout(30 * 60_000),
    });
  } catch (err) {
    throw unreachable(err, url, config.source);
  }
  const text = await response.text().catch(() => '');
  // The admin API's own refusals of the token (admin-auth.ts: 401 wrong or missing, 403 changes disabled) are plain
  // text: taken as an order's failure, they said "KEYEDGE_ERR_ACME: the admin API answered 401" and sent the operator
  // to the CA. Its words are the proxy's (never the token); the file is the one this command read.
  if (response.status === 401 || response.status === 403) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_SETUP',
      `the proxy's admin API at ${host}:${config.admin.port} refused the admin token read from ${config.admin.tokenFile}: ${response.status} ${text.split('\n')[0]!.trim()}`,
    );
  }
  const body = (parseJson(text) ?? {}) as {
    keyId?: string;
    name?: string;
    domains?: string[];
    previousDomains?: string[];
    error?: { code?: string; message?: string; problem?: string };
  };
  if (!response.ok) {
    if (body.error?.code === 'KEYEDGE_ERR_ACME' || body.error?.code === undefined)
      throw new AcmeError(
        body.error?.message ?? `the admin API answered ${response.status}`,
        body.error?.problem === undefined ? {} : { problem: body.error.problem },
      );
    throw new KeyedgeError(body.error.code as KeyedgeError['code'], body.error.message ?? `the admin API answered ${response.status}`);
  }
  process.stdout.write(
    `${action === 'issue' ? 'issued' : 'renewed'} ${body.name ?? name ?? domains[0]}: serving, key id ${body.keyId ?? '?'} (in the token)\n`,
  );
  if (body.domains !== undefined) process.stdout.write(`  names: ${body.domains.join(', ')}\n`);
  if (body.previousDomains !== undefined) {
    process.stdout.write(`  the entry's names changed from ${body.previousDomains.join(', ')}: a new certificate, renewed for these names from now on\n`);
  }
  return 0;
}

/**
 * fetch's own words were "fetch failed" (the reason is in its cause), under KEYEDGE_ERR_CLOSED, the code of a key-server
 * connection: the operator was not told the proxy was down, nor where it had been looked for. The URL carries no token.
 */
function unreachable(err: unknown, url: string, configSource: string): KeyedgeError {
  if ((err as Error).name === 'TimeoutError') {
    return new AcmeError(`the proxy's admin API at ${url} did not answer within 30 minutes (the order is still the proxy's: see its log)`, {});
  }
  const cause = (err as { cause?: { code?: unknown; errors?: { code?: unknown }[] } }).cause;
  // An AggregateError (each address of a name tried) has no code of its own; its first error's is said.
  const code = cause?.code ?? cause?.errors?.[0]?.code;
  return new KeyedgeError(
    'KEYEDGE_ERR_SETUP',
    `the proxy is not reachable at its admin API ${url} (${typeof code === 'string' ? code : 'no connection'}): ` +
      `is it running, with the admin.host and admin.port of ${configSource}?`,
  );
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
