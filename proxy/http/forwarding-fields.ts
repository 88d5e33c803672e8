/**
 * The forwarding fields: request header fields an origin takes as a proxy's
 * word on how the client came, or with which certificate, which no client may
 * set for itself (forward-headers.ts drops or replaces them unless the peer is
 * trusted, trusted-peers.ts).
 *
 * X-Forwarded-For, -Proto, -Host and Forwarded (RFC 7239) are set by keyedge
 * (CLIENT_SET). The rest (CLAIMS) are not set here, but an origin behind a
 * proxy reads them:
 *
 * - to build absolute URLs and redirects and to decide "is this HTTPS":
 *   X-Forwarded-Port (Rack, Django's USE_X_FORWARDED_PORT, Spring's
 *   ForwardedHeaderFilter, Symfony's and so Laravel's trusted headers,
 *   Werkzeug's ProxyFix, Jetty), -Prefix (Spring, Symfony, ProxyFix), -Ssl
 *   (Rack, Spring, gunicorn's secure_scheme_headers), -Protocol (gunicorn),
 *   -Scheme (Rack), -Server (Jetty's authority, Paste's PrefixMiddleware as
 *   the Host), X-Scheme (Tornado's xheaders, ahead of -Proto), X-Url-Scheme
 *   and Front-End-Https (-Proto's other spellings, MDN; CodeIgniter's
 *   is_https, Yii's secure headers), X-Proxied-Https (Jetty), X-Original-Host
 *   (the Host as Azure Application Gateway or ngrok received it; Yii 2's
 *   secure headers). A client had them make links and redirects to a host,
 *   port or path of its choosing, or flip HTTPS detection.
 * - as the client's address, for ACLs, rate limits and logs: X-Real-IP
 *   (Tornado's xheaders, ahead of -For; nginx's realip module by default,
 *   gin, chi), True-Client-IP (chi, ahead of X-Real-IP), X-Client-IP (the
 *   npm request-ip, ahead of -For), Client-IP (Rails' remote_ip,
 *   python-ipware and so django-ipware), CF-Connecting-IP (request-ip,
 *   python-ipware), Fastly-Client-IP (request-ip), X-Cluster-Client-IP,
 *   X-Forwarded and Forwarded-For (request-ip, python-ipware),
 *   X-Original-Forwarded-For (ingress-nginx passes the X-Forwarded-For it
 *   received in it, and applications behind it, and gRPC interceptors, read
 *   it as the client's). A CDN in front sets its own name over the
 *   client's; straight from a client, each is an address of its choosing.
 * - as what the client asked for, over the request line: X-Original-URL and
 *   X-Rewrite-URL (IIS URL Rewrite's and ISAPI_Rewrite's; Yii 2 takes
 *   X-Rewrite-Url as the path from its trusted hosts, Symfony before
 *   CVE-2018-14773 and Zend Framework before ZF2018-01 took both from
 *   anyone; Authelia's auth-request endpoint authorizes X-Original-URL with
 *   X-Original-Method), X-Forwarded-Uri and -Method (Traefik's forwardAuth
 *   sets them for the auth service, or passes the request's with
 *   trustForwardHeader; Authelia authorizes them, and its portal takes -Uri
 *   as its path; oauth2-proxy's skip-auth routes match -Uri behind
 *   --reverse-proxy). A request for /public with X-Original-URL: /admin was
 *   served, or authorized, as one for /admin, past any rule on the path in
 *   front.
 * - as the client's certificate, verified by the proxy in front (mutual
 *   TLS), which keyedge never asks for (tls/handshake.ts: requestCert
 *   false), so from a client each is forged: X-Forwarded-Client-Cert
 *   (Envoy's XFCC, so Istio's gateways and Cloud Foundry's Gorouter;
 *   Keycloak's Envoy lookup, gRPC-Java contrib's XFCC interceptor),
 *   X-Forwarded-Tls-Client-Cert and -Info (Traefik's passTLSClientCert,
 *   which Traefik drops from untrusted clients; Keycloak's Traefik lookup,
 *   authentik), X-Client-Cert (ASP.NET Core's CertificateForwarding default;
 *   Pulp's certguard), X-ARR-ClientCert (Azure App Service's, for its apps),
 *   Client-Cert and Client-Cert-Chain (RFC 9440, which Cloudflare can set and
 *   Keycloak's RFC 9440 lookup reads; §4: the proxy MUST remove or overwrite
 *   any the client sent), MS-ASPNETCORE-CLIENTCERT (ASP.NET Core's IIS
 *   integration, whose ForwardClientCertificate, on by default, takes it
 *   for the connection's certificate), X-Client-Verify and X-Client-DN
 *   (Puppet's ssl_client_verify_header and ssl_client_header defaults,
 *   HTTP_X_CLIENT_VERIFY and HTTP_X_CLIENT_DN: its server behind nginx
 *   takes SUCCESS and the DN for an authenticated agent), and by prefix
 *   (`namesClientCertificate`) X-SSL-* (nginx configs' -Cert
 *   ($ssl_client_cert), -Issuer, -Subject, -Verify (Snipe-IT's guide);
 *   Pound's -Subject, -Issuer, -notBefore, -notAfter, -serial, -cipher,
 *   -certificate; Eclipse hawkBit's -Issuer-Hash-1…; HAProxy's documented
 *   -Client-Verify, -Client-DN, -Client-CN, -Client-NotBefore, -NotAfter;
 *   nginx configs' -Client-Verify, -Client-S-DN, -Client-Escaped-Cert;
 *   Cloud Foundry's HAProxy: TLS facts of a client connection that only a
 *   proxy in front can state) and
 *   Ssl-Client-* (ingress-nginx's auth-tls-pass-certificate-to-upstream:
 *   -Cert, -Verify, -Subject-Dn, -Issuer-Dn; Keycloak's trusted-nginx lookup
 *   takes ssl-client-verify: SUCCESS). An origin that takes them for the
 *   client's identity took it for whichever the client named.
 *
 * From a peer not trusted CLAIMS are dropped, as Traefik drops its list
 * (-Port, -Server, -Prefix, -Uri, -Method, X-Real-Ip…) from untrusted
 * clients; a trusted peer's pass untouched: a load balancer's say what its
 * client used. Express's `trust proxy` reads only -For, -Proto and -Host.
 * X-Forwarded-Port is not set (nor by nginx or HAProxy): -Host carries the
 * client's Host, port and all, and -Proto the scheme whose default port
 * applies; one set here would name the listener's port, which a port
 * mapping in front makes wrong.
 *
 * All of these spelt with `_` for `-` (`x_forwarded_for`, which CGI-style
 * servers read as X-Forwarded-For) are dropped from everyone
 * (`spellsForwarding`): proxies write the `-` names, so a trusted peer's are
 * nearly always its client's, passed on untouched. Keycloak's reverse-proxy
 * guide names its certificate header SSL_CLIENT_CERT: a peer in front set up
 * after it must send ssl-client-cert instead.
 */

/** The forwarding fields set here: a trusted peer's are kept and appended to, anyone else's replaced. */
export const CLIENT_SET: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded']);

/** The rest (the header says who reads which): a trusted peer's pass, anyone else's are dropped. */
const CLAIMS = [
  // The scheme, host, port and path prefix the client used.
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-ssl',
  'x-forwarded-protocol',
  'x-forwarded-scheme',
  'x-forwarded-server',
  'x-scheme',
  'x-url-scheme',
  'front-end-https',
  'x-proxied-https',
  // The client's address.
  'x-real-ip',
  'true-client-ip',
  'x-client-ip',
  'client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  'x-forwarded',
  'forwarded-for',
  'x-original-forwarded-for',
  // What the client asked for.
  'x-original-url',
  'x-rewrite-url',
  'x-original-method',
  'x-forwarded-uri',
  'x-forwarded-method',
  // The Host the client used.
  'x-original-host',
  // The client's certificate, verified (the X-SSL-* and Ssl-Client-* families: namesClientCertificate).
  'x-forwarded-client-cert',
  'x-forwarded-tls-client-cert',
  'x-forwarded-tls-client-cert-info',
  'x-client-cert',
  'x-arr-clientcert',
  'client-cert',
  'client-cert-chain',
  'ms-aspnetcore-clientcert',
  'x-client-verify',
  'x-client-dn',
];

/** What a peer not trusted sent that is dropped: every forwarding field. */
export const UNTRUSTED: ReadonlySet<string> = new Set([...CLIENT_SET, ...CLAIMS]);
const SHORTEST = Math.min(...[...UNTRUSTED].map((n) => n.length));
const LONGEST = Math.max(...[...UNTRUSTED].map((n) => n.length));

const X = 0x78;
const S = 0x73;

/**
 * Whether `name` (lower case) is in the X-SSL-* or Ssl-Client-* family: what
 * nginx, HAProxy, Pound and ingress-nginx configs name the client
 * certificate's fields and the connection's TLS facts, one header each
 * (-Client-Verify, -Issuer, -Subject, -Verify, -Cert, -Client-S-DN…), more
 * than a list keeps up with; no client has a use for one of its own. Dropped
 * from a peer not trusted, as UNTRUSTED is. The first character first: most
 * names pay one comparison, those starting `x` or `s` a startsWith; no string
 * is built.
 */
export function namesClientCertificate(name: string): boolean {
  const first = name.charCodeAt(0);
  if (first === X) return name.length > 6 && name.startsWith('x-ssl-');
  return first === S && name.length > 11 && name.startsWith('ssl-client-');
}

/**
 * Whether `name` is a forwarding field (UNTRUSTED, `namesClientCertificate`)
 * spelt with `_` for `-` (`x_forwarded_for`). Servers that hand fields to
 * applications as CGI variables (PHP-FPM, WSGI, Rack: HTTP_X_FORWARDED_FOR)
 * spell both the same, so the client's reached the application as, or joined
 * ahead of, the one set here or passed from a trusted peer (Puma's
 * CVE-2024-45614); nginx drops every name with `_` by default. Only these go:
 * other names with `_` are the applications' own. Length (past the longest
 * listed name, only the prefixed families) and a `_` first: ordinary fields
 * pay no string built.
 */
export function spellsForwarding(name: string): boolean {
  if (name.length < SHORTEST) return false;
  const first = name.charCodeAt(0);
  if ((name.length > LONGEST && first !== X && first !== S) || !name.includes('_')) return false;
  const dashed = name.replaceAll('_', '-');
  return UNTRUSTED.has(dashed) || namesClientCertificate(dashed);
}
