/**
 * The handshake bench's scenarios and their ids, `kind/setup/key` (e.g. "full-tls13/keyless-unix/ecdsa"). The ids are
 * stable: the result JSON's `summary`, `npm run bench` and result comparison key on them.
 */
import { OWN_MAJOR } from '../harness/install.js';
import { HANDSHAKE_KEYS, type HandshakeKey, NODE_SETUPS, onNode, SETUP_IDS, type SetupId } from './lab.js';

/** Resumption (and the floor's), TLS 1.2 and ALPN compare keyless with nginx's key file, ECDSA only. */
const PAIR: readonly SetupId[] = ['keyless-unix', 'nginx-file'];
const EC: readonly HandshakeKey['id'][] = ['ec'];
const RESUMED: readonly SetupId[] = ['keyless-unix', 'node-floor', 'node-forward', 'nginx-file'];
/** The forwarding floor runs where its question is (what the origin hop adds to a resumed connection); layers.ts has it for full ones. */
const FULL: readonly SetupId[] = SETUP_IDS.filter((s) => s !== 'node-forward');

/** Per kind: its label (summary rows; report section "<Label> handshakes (<client>)"), set-ups, keys, and whether its Node set-ups also run under --node's majors. */
type KindSpec = { label: string; client: string; setups: readonly SetupId[]; keys: readonly HandshakeKey['id'][]; majors?: true };
const KIND_TABLE = {
  'full-tls13': { label: 'full TLS 1.3', client: 'ab -f TLS1.3, new connection per request', setups: FULL, keys: ['ec', 'rsa'], majors: true },
  'resumed-tls13': { label: 'resumed TLS 1.3', client: 'tickets, node:tls client, new connection per request', setups: RESUMED, keys: EC, majors: true },
  'full-tls12': { label: 'full TLS 1.2', client: 'spot check, ab -f TLS1.2', setups: PAIR, keys: EC },
  'alpn-h2': { label: 'full TLS 1.3 + h2', client: 'node:http2 client offering only h2, one GET per connection', setups: PAIR, keys: EC },
  'alpn-h1': { label: 'full TLS 1.3 + http/1.1 (ALPN)', client: 'the same client offering only http/1.1', setups: PAIR, keys: EC },
} satisfies Record<string, KindSpec>;

export type Kind = keyof typeof KIND_TABLE;
export const KINDS = Object.keys(KIND_TABLE) as Kind[];
export const kindLabel = (kind: Kind): string => KIND_TABLE[kind].label;
export const kindTitle = (kind: Kind): string => `${KIND_TABLE[kind].label.replace(/^./, (c) => c.toUpperCase())} handshakes (${KIND_TABLE[kind].client})`;

export const KEY_NAME: Readonly<Record<HandshakeKey['id'], string>> = { ec: 'ecdsa', rsa: 'rsa' };

export type ScenarioSpec = { readonly id: string; readonly kind: Kind; readonly setup: SetupId; readonly key: HandshakeKey };

/** Every scenario, in report order (kind, key, set-up), the Node set-ups of `majors` kinds also under each other major. */
export function allScenarios(majors: readonly number[] = [OWN_MAJOR]): ScenarioSpec[] {
  return KINDS.flatMap((kind) => {
    const k: KindSpec = KIND_TABLE[kind];
    const versioned = k.majors ? NODE_SETUPS.filter((s) => k.setups.includes(s)) : [];
    const setups = [...k.setups, ...majors.filter((m) => m !== OWN_MAJOR).flatMap((m) => versioned.map((s) => onNode(s, m)))];
    return HANDSHAKE_KEYS.filter((key) => k.keys.includes(key.id)).flatMap((key) =>
      setups.map((setup) => ({ id: `${kind}/${setup}/${KEY_NAME[key.id]}`, kind, setup, key })),
    );
  });
}

/** The scenarios matching any of `patterns` (comma-separated ids, `*` within one part), or all; throws naming a pattern that matches none. */
export function selectScenarios(patterns: string | undefined, candidates: readonly ScenarioSpec[] = allScenarios()): ScenarioSpec[] {
  if (patterns === undefined) return [...candidates];
  const list = patterns.split(',').flatMap((p) => (p.trim() === '' ? [] : [p.trim()]));
  if (list.length === 0) throw new Error('--scenarios: empty list');
  const res = list.map((p) => {
    // Escapes every special character but `*`, which matches within one part.
    const re = new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replaceAll('*', '[^/]*')}$`);
    if (!candidates.some((s) => re.test(s.id))) throw new Error(`--scenarios: '${p}' matches no scenario; known: ${candidates.map((s) => s.id).join(', ')}`);
    return re;
  });
  return candidates.filter((s) => res.some((re) => re.test(s.id)));
}
