/**
 * One HTTPS request through the proxy with node:https (fetch cannot set
 * Host): SNI and Host are the given name, the lab CA is trusted; each
 * request on its own connection unless an agent is given. Resolves with what came back, or
 * with the transport error; never rejects.
 */
import https from 'node:https';

export interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

export function request(
  port: number,
  ca: string,
  host: string,
  options: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer; localAddress?: string; agent?: https.Agent } = {},
): Promise<Answer | { error: string }> {
  return new Promise((resolve) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        servername: host,
        ca,
        method: options.method ?? 'GET',
        path: options.path ?? '/',
        headers: { host, ...options.headers },
        agent: options.agent ?? false,
        ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', (err) => resolve({ error: err.message }));
      },
    );
    req.on('error', (err) => resolve({ error: err.message }));
    req.end(options.body);
  });
}

/** The answer, or a test failure naming the transport error. */
export function answered(result: Answer | { error: string }): Answer {
  if ('error' in result) throw new Error(`no answer: ${result.error}`);
  return result;
}
