/**
 * A TLS-ALPN-01 challenge for `name` put on a worker's challenge board, as
 * the ACME issuer puts one: its certificate (RFC 8737 §3) made for the lab's
 * EC key and signed inside the token through the key server, the key never
 * leaving it.
 */
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { Algorithm } from '../../keyserver/protocol/constants.js';
import { createAlpnChallengeCertWith } from '../../keyserver/shared/alpn-cert.js';
import { csrKeyOfSpki } from '../../keyserver/shared/csr.js';
import type { ChallengeBoard } from '../../proxy/acme/challenges.js';
import { ecdsaDerToRaw } from '../../proxy/acme/jws.js';
import type { KeylessLab } from './proxy-lab.js';

const TOKEN = 'evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA';
/** The challenge's key authorization: the token and an account key's thumbprint (RFC 8555 §8.1). */
export const ALPN_KEY_AUTHORIZATION = `${TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI`;

export async function publishAlpnChallenge(board: ChallengeBoard, lab: KeylessLab, client: KeyserverClient, name: string): Promise<void> {
  const key = lab.keys.ec;
  const certificate = await createAlpnChallengeCertWith(csrKeyOfSpki(key.spki), name, ALPN_KEY_AUTHORIZATION, async (_hash, digest) =>
    ecdsaDerToRaw(await client.sign(key.keyId, Algorithm.ECDSA_SHA256, digest), 32),
  );
  await board.add({
    kind: 'tls-alpn-01',
    token: TOKEN,
    name,
    certificatePem: certificate.toString('pem'),
    keyId: key.keyId,
    spki: key.spki.toString('base64'),
  });
}
