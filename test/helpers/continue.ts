/**
 * A raw HTTP/1.1 exchange for `Expect: 100-continue` (RFC 9110 §10.1.1): what the server sends before and instead of
 * its 100, and whether it closes. For the admin API's tests.
 */
import net from 'node:net';

/**
 * Sends `head` with `Expect: 100-continue` on a raw socket to `port` (127.0.0.1), and `body` only once a `100 Continue` came. Resolves with all
 * that came back (interim and final answers) once the final answer is whole (by its length or its last chunk; with
 * `untilClose`, only once the server closes, or after 15 s), and whether the server closed.
 */
export function continueExchange(
  port: number,
  head: string,
  body: Buffer,
  options: { untilClose?: boolean } = {},
): Promise<{ answer: string; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    let sent = false;
    let closedByServer = false;
    const timer = setTimeout(() => socket.destroy(), 15_000);
    socket.on('data', (d: Buffer) => {
      answer += d.toString('latin1');
      const interim = /^HTTP\/1\.1 100 [^\r]*\r\n\r\n/.exec(answer)?.[0] ?? '';
      if (interim !== '' && !sent) {
        sent = true;
        socket.write(body);
      }
      const final = answer.slice(interim.length);
      const end = final.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: (\d+)\r\n/i.exec(final.slice(0, end))?.[1];
      const whole = length === undefined ? final.endsWith('\r\n0\r\n\r\n') : final.length >= end + 4 + Number(length);
      if (end >= 0 && whole && options.untilClose !== true) socket.destroy();
    });
    socket.on('end', () => {
      closedByServer = true;
      socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ answer, closedByServer });
    });
    socket.write(head);
  });
}
