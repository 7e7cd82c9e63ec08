// A small client for the fake's endpoints, for tests and scripts: sends exactly the given body
// (or raw text) with `authorization: Bearer <token>` and returns status, headers and body.

import { FAKE_UPSTREAM_DEFAULT_TOKEN } from './options.ts';

export interface FakeReply {
  status: number;
  headers: Headers;
  text: string;
  /** The parsed body; undefined when it is not JSON. */
  json: unknown;
}

export interface FakeCallOptions {
  /** Default FAKE_UPSTREAM_DEFAULT_TOKEN; null sends no authorization header. */
  token?: string | null;
  headers?: Record<string, string>;
  /** Sent instead of JSON.stringify(body). */
  raw?: string;
  method?: string;
}

export async function callFake(
  baseUrl: string,
  path: string,
  body?: unknown,
  opts: FakeCallOptions = {},
): Promise<FakeReply> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...opts.headers };
  const token = opts.token === undefined ? FAKE_UPSTREAM_DEFAULT_TOKEN : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const method = opts.method ?? 'POST';
  const res = await fetch(baseUrl + path, {
    method,
    headers,
    body: method === 'GET' ? undefined : (opts.raw ?? JSON.stringify(body ?? {})),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}
