/**
 * What Ace Data Cloud's official clients put on the wire for the hCaptcha endpoints, and how each
 * reads the answer. Written from reading their public source — the TypeScript and Python SDKs
 * (AceDataCloud/SDK typescript/, python/), the `hcaptcha` CLI (AceDataCloud/Clis hcaptcha/) and the
 * MCP server (AceDataCloud/MCPs hcaptcha/) — and from /work/notes/upstream-clients.md. None of
 * their code is here: these are our own models of their requests (method, path, headers, the
 * order and spelling of body fields, the JSON text) and of their answer handling.
 */
import type { LightMyRequestResponse } from 'fastify';
import type { RecordedCall } from '../../dev/fake-upstream.ts';
import { CLIENT_KEY, type TestGateway, UPSTREAM_TOKEN } from '../helpers.ts';

export const RECOGNITION = '/captcha/recognition/hcaptcha';
export const TOKEN = '/captcha/token/hcaptcha';
export const TASKS = '/captcha/tasks';

/** hCaptcha's public demo site: what the token examples of the SDKs, CLI and MCP tools use. */
export const SITE_KEY = 'a5f74b19-9e45-40e0-b45d-47ff91b7a6c2';
export const SITE_URL = 'https://accounts.hcaptcha.com/demo';

/** One request exactly as a client sends it. */
export interface WireRequest {
  /** Which client (and JSON dialect) produced it, for test names. */
  client: string;
  method: 'POST';
  path: string;
  headers: Record<string, string>;
  /** The exact body text. */
  body: string;
  /** The object the body encodes (key order as the client builds it). */
  json: Record<string, unknown>;
}

// --- JSON as each runtime writes it ---------------------------------------------------------

/** Node's fetch body in the TS SDK: `JSON.stringify`, compact, non-ASCII as raw UTF-8. */
export const nodeJson = (value: unknown): string => JSON.stringify(value);

const PYTHON_SHORT_ESCAPES: Readonly<Record<string, string>> = {
  '"': '\\"',
  '\\': '\\\\',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
};

function pythonString(text: string, ensureAscii: boolean): string {
  let out = '"';
  // UTF-16 code units: an astral character comes out as its surrogate pair, as Python writes it.
  for (let i = 0; i < text.length; i++) {
    const ch = text.charAt(i);
    const unit = text.charCodeAt(i);
    const short = PYTHON_SHORT_ESCAPES[ch];
    if (short !== undefined) out += short;
    else if (unit < 0x20 || (ensureAscii && unit > 0x7e)) {
      out += `\\u${unit.toString(16).padStart(4, '0')}`;
    } else out += ch;
  }
  return `${out}"`;
}

/**
 * Python's `json.dumps` for the values these clients send (objects, arrays, strings, booleans,
 * integers, null). Defaults as in httpx before 0.28 (`json.dumps(body)`): `", "` and `": "`
 * separators, non-ASCII escaped as `\uXXXX`. httpx 0.28 and later write compact JSON with raw
 * UTF-8 (`separators=(",", ":")`, `ensure_ascii=False`).
 */
export function pythonJson(
  value: unknown,
  options: { compact?: boolean; ensureAscii?: boolean } = {},
): string {
  const itemSep = options.compact ? ',' : ', ';
  const keySep = options.compact ? ':' : ': ';
  const ensureAscii = options.ensureAscii ?? !options.compact;
  const write = (v: unknown): string => {
    if (v === null) return 'null';
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v === 'number') {
      if (!Number.isInteger(v)) throw new RangeError('only integers are modelled');
      return String(v);
    }
    if (typeof v === 'string') return pythonString(v, ensureAscii);
    if (Array.isArray(v)) return `[${v.map(write).join(itemSep)}]`;
    if (typeof v === 'object') {
      const members = Object.entries(v as Record<string, unknown>).map(
        ([k, child]) => `${pythonString(k, ensureAscii)}${keySep}${write(child)}`,
      );
      return `{${members.join(itemSep)}}`;
    }
    throw new TypeError(`not JSON: ${typeof v}`);
  };
  return write(value);
}

// --- Each client's headers and encoder ------------------------------------------------------

/** The httpx generation a Python client runs with decides its JSON text (see pythonJson). */
export type Httpx = 'httpx<0.28' | 'httpx>=0.28';
export const HTTPX_VERSIONS: readonly Httpx[] = ['httpx<0.28', 'httpx>=0.28'];
/** What Debian 12 ships (python3-httpx), with which the CLI was run by hand. */
const HTTPX_USER_AGENT: Record<Httpx, string> = {
  'httpx<0.28': 'python-httpx/0.23.3',
  'httpx>=0.28': 'python-httpx/0.28.1',
};
const pythonEncoder = (httpx: Httpx) => (value: unknown) =>
  pythonJson(value, { compact: httpx === 'httpx>=0.28' });

/** httpx's own defaults, sent by every Python client (the CLI and MCP server set no user-agent). */
const httpxDefaults = (httpx: Httpx) => ({
  'accept-encoding': 'gzip, deflate',
  connection: 'keep-alive',
  'user-agent': HTTPX_USER_AGENT[httpx],
});

interface Dialect {
  client: string;
  headers: Record<string, string>;
  encode: (value: unknown) => string;
}

function wire(dialect: Dialect, path: string, json: Record<string, unknown>): WireRequest {
  return {
    client: dialect.client,
    method: 'POST',
    path,
    headers: dialect.headers,
    body: dialect.encode(json),
    json,
  };
}

/** Sets each field only when it is given (all four clients leave absent options out). */
function withDefined(target: Record<string, unknown>, fields: Record<string, unknown>) {
  for (const [name, value] of Object.entries(fields)) if (value !== undefined) target[name] = value;
  return target;
}

// --- TypeScript SDK (@acedatacloud/sdk 0.1.0: native fetch) --------------------------------

/**
 * `new AceDataCloud({ apiToken: key, baseURL: gateway })`. Its transport sends accept,
 * content-type, its user-agent and the bearer token; undici adds accept-language, sec-fetch-mode
 * and accept-encoding.
 */
export function tsSdk(key: string = CLIENT_KEY) {
  const dialect: Dialect = {
    client: 'TypeScript SDK',
    headers: {
      accept: 'application/json',
      'content-type': 'application/json',
      'user-agent': 'acedatacloud-node/0.1.0',
      authorization: `Bearer ${key}`,
      'accept-language': '*',
      'sec-fetch-mode': 'cors',
      'accept-encoding': 'gzip, deflate',
    },
    encode: nodeJson,
  };
  return {
    /** `client.captcha.recognition.hcaptcha(opts)`: other options (async, extras) first. */
    recognition(opts: {
      queries?: string[];
      question?: string;
      async?: boolean;
      [extra: string]: unknown;
    }) {
      const { queries, question, ...rest } = opts;
      return wire(dialect, RECOGNITION, withDefined({ ...rest }, { queries, question }));
    },
    /** `client.captcha.token.hcaptcha(opts)`: site fields, then the rest, then rqdata and proxy. */
    token(opts: {
      websiteKey: string;
      websiteUrl: string;
      rqdata?: string;
      proxy?: string;
      async?: boolean;
      [extra: string]: unknown;
    }) {
      const { websiteKey, websiteUrl, rqdata, proxy, ...rest } = opts;
      const body = { website_key: websiteKey, website_url: websiteUrl, ...rest };
      return wire(dialect, TOKEN, withDefined(body, { rqdata, proxy }));
    },
    /** `client.captcha.tasks.retrieve({ taskId })`. */
    tasksRetrieve(opts: { taskId: string; [extra: string]: unknown }) {
      const { taskId, ...rest } = opts;
      return wire(dialect, TASKS, { task_id: taskId, ...rest });
    },
    /** `client.tasks.get(id, { service: 'captcha' })`, and every poll of `client.tasks.wait`. */
    tasksGet(taskId: string) {
      return wire(dialect, TASKS, { id: taskId, action: 'retrieve' });
    },
  };
}

// --- Python SDK (acedatacloud 0.1.0: httpx) -------------------------------------------------

export function pySdk(httpx: Httpx, key: string = CLIENT_KEY) {
  const dialect: Dialect = {
    client: `Python SDK (${httpx})`,
    headers: {
      ...httpxDefaults(httpx),
      accept: 'application/json',
      'content-type': 'application/json',
      'user-agent': 'acedatacloud-python/0.1.0',
      authorization: `Bearer ${key}`,
    },
    encode: pythonEncoder(httpx),
  };
  return {
    /** `client.captcha.recognition.hcaptcha(queries=…, question=…, async_=…, **kwargs)`. */
    recognition(opts: {
      queries?: string[];
      question?: string;
      async_?: boolean;
      kwargs?: Record<string, unknown>;
    }) {
      const body = withDefined({ ...opts.kwargs }, { queries: opts.queries });
      withDefined(body, { question: opts.question, async: opts.async_ });
      return wire(dialect, RECOGNITION, body);
    },
    /** `client.captcha.token.hcaptcha(website_key=…, website_url=…, rqdata=…, proxy=…, async_=…)`. */
    token(opts: {
      website_key: string;
      website_url: string;
      rqdata?: string;
      proxy?: string;
      async_?: boolean;
      kwargs?: Record<string, unknown>;
    }) {
      const body = {
        website_key: opts.website_key,
        website_url: opts.website_url,
        ...opts.kwargs,
      };
      withDefined(body, { rqdata: opts.rqdata, proxy: opts.proxy, async: opts.async_ });
      return wire(dialect, TOKEN, body);
    },
    /** `client.captcha.tasks.retrieve(task_id=…)`. */
    tasksRetrieve(taskId: string) {
      return wire(dialect, TASKS, { task_id: taskId });
    },
    /** `client.tasks.get(task_id, service="captcha")` and each poll of `tasks.wait`. */
    tasksGet(taskId: string) {
      return wire(dialect, TASKS, { id: taskId, action: 'retrieve' });
    },
  };
}

// --- `hcaptcha` CLI (hcaptcha-cli: click + httpx) -------------------------------------------

/** `hcaptcha --token KEY …` with ACEDATACLOUD_API_BASE_URL pointing at the gateway. */
export function cli(httpx: Httpx, key: string = CLIENT_KEY) {
  const dialect: Dialect = {
    client: `hcaptcha CLI (${httpx})`,
    headers: {
      ...httpxDefaults(httpx),
      accept: 'application/json',
      authorization: `Bearer ${key}`,
      'content-type': 'application/json',
    },
    encode: pythonEncoder(httpx),
  };
  return {
    /**
     * `hcaptcha recognize [--queries JSON] [--question Q] [--async]`: only what was given;
     * `"async": true` only with --async; nothing at all sends `{}`.
     */
    recognize(opts: { queries?: string[]; question?: string; async?: true } = {}) {
      const body = withDefined({}, { queries: opts.queries, question: opts.question });
      return wire(dialect, RECOGNITION, withDefined(body, { async: opts.async }));
    },
    /** `hcaptcha token KEY URL [--proxy P] [--rqdata R] [--async]` (proxy before rqdata). */
    token(
      websiteKey: string,
      websiteUrl: string,
      opts: { proxy?: string; rqdata?: string; async?: true } = {},
    ) {
      const body = { website_key: websiteKey, website_url: websiteUrl };
      return wire(
        dialect,
        TOKEN,
        withDefined(body, { proxy: opts.proxy, rqdata: opts.rqdata, async: opts.async }),
      );
    },
    /** `hcaptcha task TASK_ID`: one read, no polling. */
    task(taskId: string) {
      return wire(dialect, TASKS, { task_id: taskId });
    },
  };
}

// --- MCP server tools (mcp-hcaptcha: FastMCP + httpx) ---------------------------------------

/**
 * The tools' HTTP layer (core/client.py). Its authorization value is masked in the published
 * snapshot; like the CLI's, it is taken to be `Bearer <token>`.
 */
export function mcp(httpx: Httpx, key: string = CLIENT_KEY) {
  const dialect: Dialect = {
    client: `MCP tools (${httpx})`,
    headers: {
      ...httpxDefaults(httpx),
      accept: 'application/json',
      authorization: `Bearer ${key}`,
      'content-type': 'application/json',
    },
    encode: pythonEncoder(httpx),
  };
  const asyncOf = (mode: 'sync' | 'async' | undefined) => (mode === 'async' ? true : undefined);
  return {
    /** `hcaptcha_recognize(queries?, question?, mode?)`: `"async": true` only for mode "async". */
    recognize(opts: { queries?: string[]; question?: string; mode?: 'sync' | 'async' }) {
      const body = withDefined({}, { queries: opts.queries, question: opts.question });
      return wire(dialect, RECOGNITION, withDefined(body, { async: asyncOf(opts.mode) }));
    },
    /** `hcaptcha_get_token(website_key, website_url, rqdata?, proxy?, mode?)`. */
    getToken(opts: {
      website_key: string;
      website_url: string;
      rqdata?: string;
      proxy?: string;
      mode?: 'sync' | 'async';
    }) {
      const body = { website_key: opts.website_key, website_url: opts.website_url };
      withDefined(body, { rqdata: opts.rqdata, proxy: opts.proxy, async: asyncOf(opts.mode) });
      return wire(dialect, TOKEN, body);
    },
    /** `hcaptcha_get_task(task_id)`. */
    getTask(taskId: string) {
      return wire(dialect, TASKS, { task_id: taskId });
    },
  };
}

// --- Sending, and what the upstream saw -----------------------------------------------------

/** Sends a client's request through the gateway, byte for byte. */
export function send(g: TestGateway, request: WireRequest): Promise<LightMyRequestResponse> {
  return g.app.inject({
    method: request.method,
    url: request.path,
    headers: request.headers,
    payload: request.body,
  });
}

/**
 * The one upstream call a request made: the same path, the gateway's own token (never the
 * client's key), JSON content.
 */
export function forwardedCall(g: TestGateway, index: number, path: string): RecordedCall {
  const call = g.fake.calls[index];
  if (call === undefined) throw new Error(`the upstream received no call #${index}`);
  if (call.path !== path) throw new Error(`call #${index} went to ${call.path}, not ${path}`);
  if (call.headers.authorization !== `Bearer ${UPSTREAM_TOKEN}`) {
    throw new Error(`call #${index} was not sent with the gateway's upstream token`);
  }
  if (call.headers['content-type'] !== 'application/json') {
    throw new Error(`call #${index} has content-type ${call.headers['content-type']}`);
  }
  return call;
}

// --- How each client reads an answer --------------------------------------------------------

/** The statuses both SDKs retry (twice, ignoring retry-after). */
export const SDK_RETRY_STATUSES: ReadonlySet<number> = new Set([408, 409, 429, 500, 502, 503, 504]);

/** Error classes the SDKs pick by `error.code`, whatever the status. */
const SDK_CLASS_BY_CODE: Readonly<Record<string, SdkErrorClass>> = {
  invalid_token: 'AuthenticationError',
  token_expired: 'AuthenticationError',
  no_token: 'AuthenticationError',
  token_mismatched: 'TokenMismatchError',
  used_up: 'InsufficientBalanceError',
  disabled: 'ResourceDisabledError',
  too_many_requests: 'RateLimitError',
  bad_request: 'ValidationError',
};

/** Then, for any other code, by status. */
const SDK_CLASS_BY_STATUS: Readonly<Record<number, SdkErrorClass>> = {
  403: 'ModerationError',
  401: 'AuthenticationError',
  429: 'RateLimitError',
  400: 'ValidationError',
};

export type SdkErrorClass =
  | 'AuthenticationError'
  | 'TokenMismatchError'
  | 'InsufficientBalanceError'
  | 'ResourceDisabledError'
  | 'RateLimitError'
  | 'ValidationError'
  | 'ModerationError'
  | 'APIError';

export interface SdkError {
  errorClass: SdkErrorClass;
  statusCode: number;
  /** `error.code`, or '' when the body has none (a flat or string `error`). */
  code: string;
  message: string;
  traceId: string | undefined;
  /** Whether the SDK would have re-sent the request (up to twice) before raising. */
  retried: boolean;
}

/**
 * The SDKs' rule, in our words: a body that is not JSON reads as code "unknown" with the text as
 * message; `error` may be an object (its code and message), a string (the message; no code) or
 * absent. The class comes from the code when the code has one, otherwise from the status, and
 * anything else is a plain APIError.
 */
export function classifySdkError(status: number, bodyText: string): SdkError {
  let body: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(bodyText);
    body = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : {};
  } catch {
    body = { error: { code: 'unknown', message: bodyText } };
  }
  const raw = body.error;
  const error =
    typeof raw === 'string'
      ? { message: raw }
      : typeof raw === 'object' && raw !== null && !Array.isArray(raw)
        ? (raw as Record<string, unknown>)
        : {};
  const code = typeof error.code === 'string' ? error.code : '';
  const message = typeof error.message === 'string' ? error.message : '';
  const errorClass = SDK_CLASS_BY_CODE[code] ?? SDK_CLASS_BY_STATUS[status] ?? 'APIError';
  return {
    errorClass,
    statusCode: status,
    code,
    message,
    traceId: typeof body.trace_id === 'string' ? body.trace_id : undefined,
    retried: SDK_RETRY_STATUSES.has(status),
  };
}

export type SdkOutcome =
  | { ok: true; status: number; json: Record<string, unknown> }
  | ({ ok: false } & SdkError);

/** Either SDK: any status below 400 returns the parsed body (201 like 200); otherwise it raises. */
export function sdkOutcome(res: LightMyRequestResponse): SdkOutcome {
  if (res.statusCode < 400) {
    return { ok: true, status: res.statusCode, json: JSON.parse(res.body) };
  }
  return { ok: false, ...classifySdkError(res.statusCode, res.body) };
}

export type CliOutcome =
  | { exitCode: 0; json: Record<string, unknown> }
  | { exitCode: 1; printed: string };

/**
 * The CLI: 401 prints "Invalid API token" and 403 "Access denied…" whatever the body; any other
 * status of 400 or more prints the raw body; each exits 1. Success prints the parsed body.
 */
export function cliOutcome(res: LightMyRequestResponse): CliOutcome {
  if (res.statusCode === 401) return { exitCode: 1, printed: 'Error: Invalid API token' };
  if (res.statusCode === 403) {
    return { exitCode: 1, printed: 'Error: Access denied. Check your API permissions.' };
  }
  if (res.statusCode >= 300) return { exitCode: 1, printed: `Error: ${res.body}` };
  return { exitCode: 0, json: JSON.parse(res.body) };
}

/** What a successful command prints with --json; throws if it would have exited 1. */
export function cliPrinted(res: LightMyRequestResponse): Record<string, unknown> {
  const outcome = cliOutcome(res);
  if (outcome.exitCode !== 0) throw new Error(`the CLI would exit 1 with ${outcome.printed}`);
  return outcome.json;
}

/**
 * An MCP tool's return value: the answer's JSON, or on an error status
 * `{"error": "Authentication Error" (401, 403) | "API Error", "message": …}` where the message is
 * `error.message`, else the flat body's `detail`, else the raw text.
 */
export function mcpToolResult(res: LightMyRequestResponse): Record<string, unknown> {
  const body = (() => {
    try {
      return JSON.parse(res.body) as Record<string, unknown>;
    } catch {
      return {};
    }
  })();
  if (res.statusCode < 400) return body;
  const error = (body.error ?? {}) as Record<string, unknown>;
  const message =
    (typeof error.message === 'string' && error.message) ||
    (typeof body.detail === 'string' && body.detail) ||
    res.body ||
    `HTTP ${res.statusCode}`;
  const kind =
    res.statusCode === 401 || res.statusCode === 403 ? 'Authentication Error' : 'API Error';
  return { error: kind, message };
}
