import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenError } from '../keyserver/shared/errors.js';
import { type EmbeddedToken, prepareEmbeddedToken, readPinFile } from '../keyserver/token/embedded.js';
import { openRetrying, Token } from '../keyserver/token/token.js';
import { REPO } from './helpers/basics.js';

// Every C_Login on a SoftHSM2 token rewrites its token file (token.object):
// truncated, then written. A process that opens the token at that moment (a
// `keyedge key list` next to a renewal's `keyedge key generate|delete`) reads
// an empty or half-written file: SoftHSM2 then shows no token, answers
// CKR_GENERAL_ERROR to C_GetTokenInfo or C_Login, or CKR_USER_PIN_NOT_INITIALIZED
// to C_Login (1 open in 1,116 in one CI run), until it is initialised again. Here another
// process logs in every 50 ms while this one opens the token again and again.
let dir: string;
let embedded: EmbeddedToken;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-open-race-'));
  embedded = prepareEmbeddedToken(dir, 'keyedge-race');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A child that logs in and out of the token every 50 ms for `ms`; resolves with how many logins it made. */
function loginLoop(ms: number): Promise<number> {
  const script = `
    import pkcs11js from 'pkcs11js';
    const [modulePath, pin, ms] = process.argv.slice(1);
    const pause = new Int32Array(new SharedArrayBuffer(4));
    const end = Date.now() + Number(ms);
    let logins = 0;
    while (Date.now() < end) {
      const p = new pkcs11js.PKCS11();
      p.load(modulePath);
      p.C_Initialize();
      try {
        const s = p.C_OpenSession(p.C_GetSlotList(true)[0], pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
        for (let i = 0; i < 20 && Date.now() < end; i++) {
          p.C_Login(s, pkcs11js.CKU_USER, pin);
          p.C_Logout(s);
          logins++;
          Atomics.wait(pause, 0, 0, 50);
        }
      } catch {
        // It reads the file this test's opens rewrite too: start over.
      }
      p.C_Finalize();
      p.close();
    }
    process.stdout.write(String(logins));`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, embedded.modulePath, readPinFile(embedded.pinFile), String(ms)], {
    cwd: REPO,
    env: { ...process.env, SOFTHSM2_CONF: embedded.confFile },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', () => resolve(Number(out)));
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('opening a token while another process logs in to it', () => {
  it('succeeds every time', async () => {
    const writer = loginLoop(8_000);
    await sleep(1_000); // the child's node start
    const options = { modulePath: embedded.modulePath, token: { label: 'keyedge-race' }, pin: readPinFile(embedded.pinFile), pinSource: 'test' };
    const failures: string[] = [];
    let opens = 0;
    const end = Date.now() + 5_000;
    while (Date.now() < end) {
      opens++;
      try {
        Token.open(options).close();
      } catch (err) {
        failures.push(err instanceof Error ? err.message : String(err));
      }
      // Lets the child's output in; the opens themselves are synchronous.
      if (opens % 20 === 0) await sleep(0);
    }
    const logins = await writer;
    expect(logins, 'the other process logged in meanwhile').toBeGreaterThan(10);
    expect(opens).toBeGreaterThan(20);
    expect(failures, `${failures.length} of ${opens} opens failed`).toEqual([]);
  }, 30_000);
});

describe('openRetrying', () => {
  const transient = () =>
    new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', 'C_GetTokenInfo failed: CKR_GENERAL_ERROR', { cause: { code: pkcs11js.CKR_GENERAL_ERROR } });

  it('opens again after CKR_GENERAL_ERROR and returns the token once the module answers', () => {
    let calls = 0;
    const opened = openRetrying(
      () => {
        calls++;
        if (calls < 3) throw transient();
        return 'token';
      },
      3,
      1,
    );
    expect([opened, calls]).toEqual(['token', 3]);
  });

  it('gives up after the last attempt with the module’s error', () => {
    let calls = 0;
    expect(() =>
      openRetrying(
        () => {
          calls++;
          throw transient();
        },
        3,
        1,
      ),
    ).toThrow(/C_GetTokenInfo failed: CKR_GENERAL_ERROR/);
    expect(calls).toBe(3);
  });

  it('opens again after a login that finds no user PIN (the token file read half-written)', () => {
    let calls = 0;
    const halfWritten = new TokenError('KEYEDGE_ERR_TOKEN_LOGIN', "login to token 'x' refused: CKR_USER_PIN_NOT_INITIALIZED", {
      cause: { code: pkcs11js.CKR_USER_PIN_NOT_INITIALIZED },
    });
    const opened = openRetrying(
      () => {
        calls++;
        if (calls < 2) throw halfWritten;
        return 'token';
      },
      3,
      1,
    );
    expect([opened, calls]).toEqual(['token', 2]);
  });

  it('does not try a refused PIN again (a token counts failed logins)', () => {
    let calls = 0;
    const refused = new TokenError('KEYEDGE_ERR_TOKEN_LOGIN', 'login refused: CKR_PIN_INCORRECT', { cause: { code: pkcs11js.CKR_PIN_INCORRECT } });
    expect(() =>
      openRetrying(
        () => {
          calls++;
          throw refused;
        },
        3,
        1,
      ),
    ).toThrow(refused);
    expect(calls).toBe(1);
  });
});
