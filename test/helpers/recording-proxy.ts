/**
 * `keyedge proxy` with one worker serving one name over TLS (HTTP/2 offered),
 * routed to the recording origin (recording-origin.ts): the fixture of the
 * HTTP/2 downgrade tests, which write raw frames and read back exactly what
 * reached the origin. One worker, so that every connection, stream and origin
 * request goes through the same process, whose pid and health the test reads.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './proxy-lab.js';
import { type RecordingOrigin, startRecordingOrigin } from './recording-origin.js';

export interface RecordingProxy {
  readonly lab: KeylessLab;
  readonly origin: RecordingOrigin;
  readonly proxy: ClusterProxy;
  /** The lab CA, PEM. */
  readonly ca: string;
  close(): Promise<void>;
}

export async function startRecordingProxy(name: string, host: string): Promise<RecordingProxy> {
  const lab = await startKeylessLab();
  const origin = await startRecordingOrigin();
  const cert = await lab.certificate(name, lab.keys.ec, [host]);
  const proxy = await startClusterProxy(lab, name, (p) => {
    writeFileSync(join(p.storeDir, `${name}.pem`), readFileSync(cert.file));
    return storeProxyConfig(lab, p, { workers: 1, domains: [{ name: host, origin: origin.url }] });
  });
  return {
    lab,
    origin,
    proxy,
    ca: readFileSync(lab.caFile, 'utf8'),
    async close() {
      await proxy.stop();
      await origin.close();
      await lab.close();
    },
  };
}
