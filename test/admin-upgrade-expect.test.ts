import type http from 'node:http';
import type net from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startAdmin } from '../keyserver/server/admin.js';
import { plainClient, within } from './helpers/pipelined.js';

// An admin port's request with `Expect: foo` gets Node's 417 and never reaches the handler; an Upgrade with it, which
// Node hands over before it looks at Expect, was answered by the handler as if the header were not there (admin-upgrade.ts,
// shared by both admin ports). The key server's admin port, in this process.
let server: http.Server;

beforeAll(async () => {
  server = await startAdmin('127.0.0.1', 0, new Registry(), () => true);
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** Writes `head` on a new connection; what came back once the server closed it (or after 8 s), and whether it did. */
async function exchange(head: string): Promise<{ text: string; closed: boolean }> {
  const client = await plainClient((server.address() as net.AddressInfo).port);
  client.socket.write(head);
  const closed = await within(client.closed, 8000);
  client.socket.destroy();
  return { text: client.text(), closed };
}

const statuses = (text: string): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);

it.each([
  ['an ordinary request', 'GET /healthz HTTP/1.1\r\nHost: k\r\nExpect: foo\r\nConnection: close\r\n\r\n'],
  ['an Upgrade', 'GET /healthz HTTP/1.1\r\nHost: k\r\nExpect: foo\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n'],
])('%s with an Expect other than 100-continue gets 417, and the connection closes', async (_name, head) => {
  const { text, closed } = await exchange(head);
  expect({ statuses: statuses(text), close: /\r\nconnection: close\r\n/i.test(text), closed }).toEqual({ statuses: ['417'], close: true, closed: true });
});

it('an Upgrade with Expect: 100-continue is answered as the request it is', async () => {
  const { text } = await exchange('GET /healthz HTTP/1.1\r\nHost: k\r\nExpect: 100-continue\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
  expect(statuses(text)).toEqual(['200']);
});
