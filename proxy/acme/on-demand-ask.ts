/**
 * The on-demand gate's outside checks (on-demand.ts, gates 5 and 6): the
 * operator's ask endpoint and the CNAME lookup, and the pause after one of
 * them failed.
 *
 * A check answers `allowed`, `refused` (the endpoint said no: a status other
 * than 2xx and 5xx; the name has no CNAME to the target) or `failed` (no
 * answer: a timeout, a connection refused, a 5xx, a DNS server failure). The
 * gate remembers a refusal for `refusedSeconds`, in a fleet for every node;
 * it remembered a failure the same way: an ask endpoint restarting for a few
 * seconds, or slow under load, left every name seen meanwhile, a new
 * customer's among them, refused for an hour on every node. A failure is not
 * remembered; instead checks pause (the gate answers `busy`, nothing asked)
 * for 1 s after it, doubling while failures go on, up to 30 s, and a check
 * that answers ends the pause: an endpoint that is down or drowning gets one
 * check per pause, not one per name a client sends, and a name is checked
 * again with its next handshake after the endpoint is back.
 *
 * The ask request: `GET ask?domain=NAME`, redirects not followed (a 3xx is a
 * refusal), the body never read (a huge or endless one costs nothing), the
 * whole of it within `askTimeoutMs`.
 */

/** The pause after a first failure, and the most it doubles to while failures go on. */
const PAUSE_MIN_MS = 1_000;
const PAUSE_MAX_MS = 30_000;

export type CheckVerdict = { readonly allowed: true } | { readonly refused: string } | { readonly failed: string };

export const ALLOWED: CheckVerdict = { allowed: true };

/**
 * The ask URL without its user and password, and those as an Authorization
 * header (Basic, RFC 7617), as curl sends them. fetch refuses a URL that
 * carries credentials, with an error quoting the URL, password and all: every
 * name was refused and each refusal's log line held the password.
 */
function askRequest(ask: string): { url: URL; headers: Record<string, string> } {
  const url = new URL(ask);
  if (url.username === '' && url.password === '') return { url, headers: {} };
  const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  url.username = '';
  url.password = '';
  return { url, headers: { authorization: `Basic ${Buffer.from(credentials).toString('base64')}` } };
}

/** The ask endpoint's client: a verdict per name. */
export function askEndpoint(ask: string, timeoutMs: number): (name: string) => Promise<CheckVerdict> {
  const request = askRequest(ask);
  return async (name) => {
    const url = new URL(request.url);
    // Percent-encoded by URLSearchParams; the name is letters, digits, '-' and '.' here anyway.
    url.searchParams.set('domain', name);
    try {
      const response = await fetch(url, { headers: request.headers, signal: AbortSignal.timeout(timeoutMs), redirect: 'manual' });
      await response.body?.cancel();
      if (response.status >= 200 && response.status < 300) return ALLOWED;
      // A 5xx is the endpoint's failure, not its answer about the name (RFC 9110 §15.6).
      return response.status >= 500 ? { failed: `the ask endpoint answered ${response.status}` } : { refused: `the ask endpoint answered ${response.status}` };
    } catch (err) {
      return { failed: `the ask endpoint failed: ${(err as Error).name === 'TimeoutError' ? 'no answer in time' : (err as Error).message}` };
    }
  };
}

/** The pause of checks after a failure: 1 s, doubling while failures go on (one per pause), up to 30 s; an answer ends it. */
export class CheckPause {
  #until = 0;
  #pauseMs = 0;

  /** Whether checks are paused now. */
  paused(): boolean {
    return performance.now() < this.#until;
  }

  /** A check failed: pause, or, if one that started before the pause failed too, leave the pause as it is. */
  failed(): void {
    const now = performance.now();
    if (now < this.#until) return;
    this.#pauseMs = this.#pauseMs === 0 ? PAUSE_MIN_MS : Math.min(PAUSE_MAX_MS, this.#pauseMs * 2);
    this.#until = now + this.#pauseMs;
  }

  /** A check answered: the endpoint is back. */
  answered(): void {
    this.#until = 0;
    this.#pauseMs = 0;
  }
}
