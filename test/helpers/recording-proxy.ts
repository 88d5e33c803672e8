/**
 * `keyedge proxy` with one worker serving one name over TLS (HTTP/2 offered),
 * routed to the recording origin (recording-origin.ts): the fixture of the
 * HTTP/2 downgrade tests, which write raw frames and read back exactly what
 * reached the origin. One worker, so that every connection, stream and origin
 * request goes through the same process, whose pid and health the test reads.
 */
import { type OriginProxy, startOriginProxy } from './origin-proxy.js';
import { type RecordingOrigin, startRecordingOrigin } from './recording-origin.js';

export type RecordingProxy = OriginProxy<RecordingOrigin>;

export function startRecordingProxy(name: string, host: string): Promise<RecordingProxy> {
  return startOriginProxy(name, host, startRecordingOrigin, { workers: 1 });
}
