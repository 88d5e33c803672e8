/**
 * Store entries kept by another tool: an entry whose chain or metadata file
 * is a symbolic link (certbot's live/NAME/fullchain.pem, which certbot renews
 * by re-pointing the link into archive/; a Kubernetes secret volume's file;
 * metadata kept by configuration management). The proxy reads such an entry
 * through its links and follows them when they are re-pointed; keyedge never
 * writes it.
 *
 * Why a write is refused rather than done: the store writes a temp file and
 * renames it over the target (store-files.ts), which puts a plain file in the
 * link's place, and the other tool's later renewals then never reach the
 * proxy, with nobody told; writing through the link instead would change the
 * other tool's own files (certbot's archive, kept beside its private key and
 * its own idea of what it issued). So an upload or `keyedge cert add/replace`
 * of such an entry is refused, KEYEDGE_ERR_CERT_LINKED naming the link and
 * its target, before anything is validated or written. A link made between
 * this check and the rename is replaced: two tools writing one entry at once
 * is the race store.ts assumes away.
 */
import { linkTarget } from '../../keyserver/shared/link-target.js';
import { CertificateStoreError } from './errors.js';

/** Throws KEYEDGE_ERR_CERT_LINKED when either file of entry `name` is a symbolic link, dangling or not. */
export function refuseLinkedEntry(name: string, paths: { readonly chainPath: string; readonly metaPath: string }): void {
  for (const [file, what] of [
    [paths.chainPath, 'chain'],
    [paths.metaPath, 'metadata'],
  ] as const) {
    const target = linkTarget(file);
    if (target === undefined) continue;
    throw new CertificateStoreError(
      'KEYEDGE_ERR_CERT_LINKED',
      name,
      `certificate '${name}' is kept by another tool: its ${what} ${file} is a symbolic link to ${target}; keyedge writes neither over the link ` +
        "(that tool's renewals would no longer reach the proxy) nor through it (into that tool's files). Renew it with that tool: the proxy " +
        'serves what the link points at and follows it when it is re-pointed. To have keyedge keep the entry instead, put a copy of the file ' +
        "in the link's place first",
    );
  }
}
