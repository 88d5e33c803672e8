/**
 * URLs as the proxy shows them: in GET /config, in log lines and in error
 * messages. A configured URL may carry a credential: the on-demand `ask`
 * URL's user and password (sent as Basic authorization) or a token in its
 * query, a CA's directory URL a token in its query. Shown, each of these
 * reads `*****`: the user, the password, every query parameter's value (its
 * name is kept: it says what the URL sends) and the fragment. Nothing else
 * of the URL is changed (its path is shown as it is).
 */

/** What a URL's user, password, query values and fragment read as. */
const MASKED = '*****';

/**
 * `value` with the user, password, query values and fragment of every URL in it masked, wherever the URL is: a user
 * alone may be the credential (a token sent as the Basic user name), and so may any query parameter or the fragment.
 */
export function withoutCredentials(value: unknown): unknown {
  if (typeof value === 'string') return maskedUrl(value);
  if (Array.isArray(value)) return value.map(withoutCredentials);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutCredentials(v)]));
  return value;
}

/** `text` with its user, password, query values and fragment masked when it is a URL that has any; else `text`. */
export function maskedUrl(text: string): string {
  if (!/[@?#]/.test(text) || !URL.canParse(text)) return text;
  const url = new URL(text);
  if (url.username === '' && url.password === '' && url.search === '' && url.hash === '') return text;
  if (url.username !== '') url.username = MASKED;
  if (url.password !== '') url.password = MASKED;
  if (url.search !== '') url.search = maskQuery(url.search.slice(1));
  if (url.hash !== '') url.hash = MASKED;
  return url.href;
}

/**
 * The query (RFC 3986 §3.4) with each parameter's value masked and its name kept, as written (not re-encoded): the
 * names say what the URL sends. A part without `=` may be a bare token: it is masked whole. Empty values stay empty.
 */
function maskQuery(query: string): string {
  return query
    .split('&')
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq < 0) return part === '' ? part : MASKED;
      return eq === part.length - 1 ? part : `${part.slice(0, eq)}=${MASKED}`;
    })
    .join('&');
}
