/**
 * The scenarios of bench/handshake/main.ts and their ids, e.g.
 * "full-tls13/keyless-unix/ecdsa": what kind of handshake, which server set-up,
 * which key. The ids are stable: the result JSON's `summary`, the orchestrator
 * (`npm run bench`) and result comparison key on them.
 */
import { OWN_MAJOR } from '../harness/node-versions.js';
import { HANDSHAKE_KEYS, type HandshakeKey, NODE_SETUPS, onNode, SETUP_IDS, type SetupId } from './lab.js';

/**
 * full-tls13     new TCP connection + full TLS 1.3 handshake per request (ab -f TLS1.3)
 * resumed-tls13  new TCP connection + TLS 1.3 resumption with a session ticket (bench/handshake/resume.ts)
 * full-tls12     new TCP connection + full TLS 1.2 handshake (ab -f TLS1.2), a spot check
 * alpn-h2        new connection + full TLS 1.3 handshake offering only ALPN h2, one GET over HTTP/2 (alpn.ts)
 * alpn-h1        the same client offering only http/1.1: the pair shows what negotiating h2 costs (issue 13)
 */
export type Kind = 'full-tls13' | 'resumed-tls13' | 'full-tls12' | 'alpn-h2' | 'alpn-h1';

export const KINDS: readonly Kind[] = ['full-tls13', 'resumed-tls13', 'full-tls12', 'alpn-h2', 'alpn-h1'];

/** Key names in scenario ids. */
export const KEY_NAME: Readonly<Record<HandshakeKey['id'], string>> = { ec: 'ecdsa', rsa: 'rsa' };

/**
 * Set-ups each kind runs with (resumption, TLS 1.2 and ALPN are compared keyless vs nginx with a key file, ECDSA
 * only); `majors`: the Node set-ups also under each other Node major.
 */
function kindSetups(kind: Kind, majors: readonly number[]): SetupId[] {
  const base: readonly SetupId[] =
    kind === 'full-tls13' ? SETUP_IDS : kind === 'resumed-tls13' ? ['keyless-unix', 'node-floor', 'nginx-file'] : ['keyless-unix', 'nginx-file'];
  const versioned = kind === 'full-tls13' || kind === 'resumed-tls13' ? NODE_SETUPS.filter((s) => base.includes(s)) : [];
  return [...base, ...majors.filter((m) => m !== OWN_MAJOR).flatMap((m) => versioned.map((s) => onNode(s, m)))];
}
const KIND_KEYS: Readonly<Record<Kind, readonly HandshakeKey['id'][]>> = {
  'full-tls13': ['ec', 'rsa'],
  'resumed-tls13': ['ec'],
  'full-tls12': ['ec'],
  'alpn-h2': ['ec'],
  'alpn-h1': ['ec'],
};

export interface ScenarioSpec {
  readonly id: string;
  readonly kind: Kind;
  readonly setup: SetupId;
  readonly key: HandshakeKey;
}

export function scenarioId(kind: Kind, setup: SetupId, key: HandshakeKey): string {
  return `${kind}/${setup}/${KEY_NAME[key.id]}`;
}

/** Every scenario the bench knows, in report order (kind, then key, then set-up). */
export function allScenarios(majors: readonly number[] = [OWN_MAJOR]): ScenarioSpec[] {
  const out: ScenarioSpec[] = [];
  for (const kind of KINDS) {
    for (const key of HANDSHAKE_KEYS.filter((k) => KIND_KEYS[kind].includes(k.id))) {
      for (const setup of kindSetups(kind, majors)) out.push({ id: scenarioId(kind, setup, key), kind, setup, key });
    }
  }
  return out;
}

/** A pattern: a scenario id where `*` matches any run of characters within one part, e.g. "full-tls13/*\/ecdsa". */
function matcher(pattern: string): RegExp {
  const escaped = pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${escaped.join('[^/]*')}$`);
}

/**
 * The scenarios matching any of `patterns` (comma-separated ids with `*`), or
 * all when undefined. Throws naming a pattern that matches nothing.
 */
export function selectScenarios(patterns: string | undefined, candidates: readonly ScenarioSpec[] = allScenarios()): ScenarioSpec[] {
  if (patterns === undefined) return [...candidates];
  const list = patterns
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (list.length === 0) throw new Error('--scenarios: empty list');
  const res = list.map((p) => ({ p, re: matcher(p) }));
  for (const { p, re } of res) {
    if (!candidates.some((s) => re.test(s.id))) {
      throw new Error(`--scenarios: '${p}' matches no scenario; known: ${candidates.map((s) => s.id).join(', ')}`);
    }
  }
  return candidates.filter((s) => res.some(({ re }) => re.test(s.id)));
}
