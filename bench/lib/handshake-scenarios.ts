/**
 * The scenarios of bench/handshake.ts and their ids, e.g.
 * "full-tls13/keyless-unix/ecdsa": what kind of handshake, which server set-up,
 * which key. The ids are stable: the result JSON's `summary`, the orchestrator
 * (`npm run bench`) and result comparison key on them.
 */
import { HANDSHAKE_KEYS, type HandshakeKey, SETUP_IDS, type SetupId } from './handshake-lab.js';

/**
 * full-tls13     new TCP connection + full TLS 1.3 handshake per request (ab -f TLS1.3)
 * resumed-tls13  new TCP connection + TLS 1.3 resumption with a session ticket (bench/lib/handshake-resume.ts)
 * full-tls12     new TCP connection + full TLS 1.2 handshake (ab -f TLS1.2), a spot check
 */
export type Kind = 'full-tls13' | 'resumed-tls13' | 'full-tls12';

export const KINDS: readonly Kind[] = ['full-tls13', 'resumed-tls13', 'full-tls12'];

/** Key names in scenario ids. */
export const KEY_NAME: Readonly<Record<HandshakeKey['id'], string>> = { ec: 'ecdsa', rsa: 'rsa' };

/** Set-ups each kind runs with (resumption and TLS 1.2 are compared keyless vs nginx with a key file, ECDSA only). */
const KIND_SETUPS: Readonly<Record<Kind, readonly SetupId[]>> = {
  'full-tls13': SETUP_IDS,
  'resumed-tls13': ['keyless-unix', 'nginx-file'],
  'full-tls12': ['keyless-unix', 'nginx-file'],
};
const KIND_KEYS: Readonly<Record<Kind, readonly HandshakeKey['id'][]>> = { 'full-tls13': ['ec', 'rsa'], 'resumed-tls13': ['ec'], 'full-tls12': ['ec'] };

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
export function allScenarios(): ScenarioSpec[] {
  const out: ScenarioSpec[] = [];
  for (const kind of KINDS) {
    for (const key of HANDSHAKE_KEYS.filter((k) => KIND_KEYS[kind].includes(k.id))) {
      for (const setup of KIND_SETUPS[kind]) out.push({ id: scenarioId(kind, setup, key), kind, setup, key });
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
