/**
 * The scenarios of bench/handshake/main.ts and their ids, e.g. "full-tls13/keyless-unix/ecdsa": what kind of
 * handshake, which server set-up, which key. The ids are stable: the result JSON's `summary`, the orchestrator (`npm
 * run bench`) and result comparison key on them.
 */
import { OWN_MAJOR } from '../harness/install.js';
import { HANDSHAKE_KEYS, type HandshakeKey, NODE_SETUPS, onNode, SETUP_IDS, type SetupId } from './lab.js';

/**
 * Per kind: its label in the summary rows, its section title in the report, the set-ups it runs with (resumption,
 * TLS 1.2 and ALPN are compared keyless vs nginx with a key file, ECDSA only), and whether its Node set-ups also run
 * under the other Node majors (--node).
 */
const KIND_TABLE = {
  'full-tls13': {
    label: 'full TLS 1.3',
    title: 'Full TLS 1.3 handshakes (ab -f TLS1.3, new connection per request)',
    setups: SETUP_IDS,
    keys: ['ec', 'rsa'],
    majors: true,
  },
  'resumed-tls13': {
    label: 'resumed TLS 1.3',
    title: 'Resumed TLS 1.3 handshakes (session tickets, node:tls client, new connection per request)',
    setups: ['keyless-unix', 'node-floor', 'nginx-file'],
    keys: ['ec'],
    majors: true,
  },
  'full-tls12': { label: 'full TLS 1.2', title: 'Full TLS 1.2 handshakes, spot check (ab -f TLS1.2)', setups: ['keyless-unix', 'nginx-file'], keys: ['ec'] },
  'alpn-h2': {
    label: 'full TLS 1.3 + h2',
    title: 'Full TLS 1.3 handshakes negotiating h2 (node:http2 client, one GET per connection)',
    setups: ['keyless-unix', 'nginx-file'],
    keys: ['ec'],
  },
  'alpn-h1': {
    label: 'full TLS 1.3 + http/1.1 (ALPN)',
    title: 'Full TLS 1.3 handshakes negotiating http/1.1 (the same client offering only http/1.1)',
    setups: ['keyless-unix', 'nginx-file'],
    keys: ['ec'],
  },
} satisfies Record<string, { label: string; title: string; setups: readonly SetupId[]; keys: readonly HandshakeKey['id'][]; majors?: true }>;

export type Kind = keyof typeof KIND_TABLE;
export const KINDS = Object.keys(KIND_TABLE) as Kind[];
export const kindLabel = (kind: Kind): string => KIND_TABLE[kind].label;
export const kindTitle = (kind: Kind): string => KIND_TABLE[kind].title;

/** Key names in scenario ids. */
export const KEY_NAME: Readonly<Record<HandshakeKey['id'], string>> = { ec: 'ecdsa', rsa: 'rsa' };

export interface ScenarioSpec {
  readonly id: string;
  readonly kind: Kind;
  readonly setup: SetupId;
  readonly key: HandshakeKey;
}

/** Every scenario the bench knows, in report order (kind, then key, then set-up); `majors`: the Node set-ups also under each other major. */
export function allScenarios(majors: readonly number[] = [OWN_MAJOR]): ScenarioSpec[] {
  return KINDS.flatMap((kind) => {
    const k: { setups: readonly SetupId[]; keys: readonly string[]; majors?: true } = KIND_TABLE[kind];
    const versioned = k.majors ? NODE_SETUPS.filter((s) => k.setups.includes(s)) : [];
    const setups = [...k.setups, ...majors.filter((m) => m !== OWN_MAJOR).flatMap((m) => versioned.map((s) => onNode(s, m)))];
    return HANDSHAKE_KEYS.filter((key) => k.keys.includes(key.id)).flatMap((key) =>
      setups.map((setup) => ({ id: `${kind}/${setup}/${KEY_NAME[key.id]}`, kind, setup, key })),
    );
  });
}

/**
 * The scenarios matching any of `patterns` (comma-separated ids, `*` matching within one part, e.g. "full-tls13/*\/ecdsa"),
 * or all when undefined. Throws naming a pattern that matches nothing.
 */
export function selectScenarios(patterns: string | undefined, candidates: readonly ScenarioSpec[] = allScenarios()): ScenarioSpec[] {
  if (patterns === undefined) return [...candidates];
  const list = patterns
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (list.length === 0) throw new Error('--scenarios: empty list');
  const res = list.map((p) => {
    const re = new RegExp(
      `^${p
        .split('*')
        .map((x) => x.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('[^/]*')}$`,
    );
    if (!candidates.some((s) => re.test(s.id))) throw new Error(`--scenarios: '${p}' matches no scenario; known: ${candidates.map((s) => s.id).join(', ')}`);
    return re;
  });
  return candidates.filter((s) => res.some((re) => re.test(s.id)));
}
