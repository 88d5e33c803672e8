/**
 * A running `keyedge keyserver` reads its PIN file again each time it opens its token again (live-token.ts): a PIN
 * file replaced by a FIFO held open(2) until a writer came, with the event loop, so /healthz, the admin port and
 * every sign waited. The file is refused unread now (config/setting-file.ts), the reopen fails naming the file, and
 * the key server answers meanwhile; the PIN put back, it opens the token again by itself.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CLI, removeDir, sleep, tempDir } from './helpers/basics.js';
import { readUserPin } from './helpers/keyserver.js';

let dir: string;
let stateDir: string;
let server: ChildProcess;
let adminPort: number;
let output = '';

beforeAll(async () => {
  dir = tempDir('keyedge-pin-fifo-');
  stateDir = join(dir, 'state');
  const config = join(dir, 'keyserver.json');
  writeFileSync(config, JSON.stringify({ stateDir, admin: { host: '127.0.0.1', port: 0 }, log: { level: 'info' }, pkcs11: { sessions: 1 } }));
  const made = spawnSync(process.execPath, [CLI, 'key', 'generate', '--config', config, '--type', 'ec-p256', '--label', 'edge'], { encoding: 'utf8' });
  expect(made.status, made.stderr).toBe(0);
  server = spawn(process.execPath, [CLI, 'keyserver', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  adminPort = await new Promise<number>((resolve, reject) => {
    const seen = (chunk: Buffer): void => {
      output += chunk.toString();
      const ready = output.split('\n').find((line) => line.includes('"key server ready"'));
      if (ready !== undefined) resolve((JSON.parse(ready) as { admin: { port: number } }).admin.port);
    };
    server.stdout!.on('data', seen);
    server.stderr!.on('data', seen);
    server.on('exit', (code) => reject(new Error(`the key server exited (${code}) before it was ready`)));
  });
}, 120_000);

afterAll(async () => {
  if (server?.exitCode === null) {
    await new Promise((resolve) => {
      server.on('exit', resolve);
      server.kill('SIGKILL');
    });
  }
  if (dir !== undefined) removeDir(dir);
});

/** /healthz's status, or the error's name when no answer came within 15 s. */
async function healthz(): Promise<number | string> {
  try {
    return (await fetch(`http://127.0.0.1:${adminPort}/healthz`, { signal: AbortSignal.timeout(15_000) })).status;
  } catch (err) {
    return (err as Error).name;
  }
}

it('a PIN file that is a FIFO when the token is opened again is refused unread, naming it: the key server still answers, and serves again once the PIN is back', async () => {
  const tokenDir = join(stateDir, 'token');
  const pinFile = join(tokenDir, 'user.pin');
  const pin = readUserPin(stateDir);
  const soPin = readFileSync(join(tokenDir, 'so.pin'), 'utf8').trim();
  const env = { ...process.env, SOFTHSM2_CONF: join(tokenDir, 'softhsm2.conf') };
  const softhsm = (args: string[]): void => void execFileSync('softhsm2-util', args, { env, stdio: 'ignore' });
  expect(await healthz()).toBe(200);
  renameSync(pinFile, `${pinFile}.kept`);
  try {
    execFileSync('mkfifo', ['-m', '600', pinFile]);
    // The token re-created under its label: a SIGHUP's look finds it another one and opens it again, reading the PIN.
    softhsm(['--delete-token', '--token', 'keyedge']);
    softhsm(['--init-token', '--free', '--label', 'keyedge', '--pin', pin, '--so-pin', soPin]);
    server.kill('SIGHUP');
    const refused = `cannot read the PIN file ${pinFile} (pkcs11.pin.file): not a regular file`;
    for (let i = 0; i < 300 && !output.includes(refused); i++) await sleep(100);
    expect(await healthz()).toBe(503);
    expect(output.includes(refused), 'the reopen refused naming the PIN file').toBe(true);
  } finally {
    // A key server blocked in its open(2) of the FIFO is let go (a writer came and went).
    try {
      closeSync(openSync(pinFile, constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // No reader: nothing is blocked on it.
    }
    rmSync(pinFile, { force: true });
    renameSync(`${pinFile}.kept`, pinFile);
  }
  // Attempts go on every second by themselves: the PIN back, the token opens again.
  for (let i = 0; i < 300 && (await healthz()) !== 200; i++) await sleep(100);
  expect(await healthz()).toBe(200);
  expect(output.includes(pin), 'the PIN in the log').toBe(false);
}, 120_000);
