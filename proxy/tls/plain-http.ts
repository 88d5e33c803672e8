/**
 * Our answer to a plain HTTP request sent to a TLS port (a client that forgot
 * https://): nginx's answer to the same mistake (its 497 code, sent as 400),
 * so the client hears why instead of a reset it would retry. Our own bytes,
 * fixed, so nothing of the request is echoed.
 */

const PLAIN_HTTP_BODY = 'The plain HTTP request was sent to HTTPS port\n';

export const PLAIN_HTTP_ANSWER = Buffer.from(
  'HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n' +
    `content-length: ${PLAIN_HTTP_BODY.length}\r\nx-keyedge-error: KEYEDGE_HTTP_PLAIN_HTTP\r\nconnection: close\r\n\r\n${PLAIN_HTTP_BODY}`,
  'latin1',
);
