/**
 * The first bytes a real node:tls client sends (its ClientHello), captured on
 * a plain TCP server: real input for the ClientHello reader and for clients
 * that stall after their hello.
 */
import net from 'node:net';
import tls from 'node:tls';

export async function captureClientHello(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const got = new Promise<Buffer>((resolve) =>
    server.once('connection', (socket) =>
      socket.once('data', (d: Buffer) => {
        resolve(d);
        socket.destroy();
      }),
    ),
  );
  const client = tls.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', ...options });
  client.on('error', () => {});
  const hello = await got;
  client.destroy();
  server.close();
  return hello;
}
