/**
 * Every error the gateway itself produces, in one table (docs/api.md → Errors), and the one
 * function that builds the envelope. Free of Fastify imports so the core can throw these too.
 *
 * Codes follow the upstream's own where one exists, so Ace Data Cloud's SDKs raise the same
 * exception class against the gateway as against the upstream (they pick the class by code first,
 * then by status).
 */
export const GATEWAY_ERRORS = {
  bad_request: { status: 400, code: 'bad_request' },
  invalid_token: { status: 401, code: 'invalid_token' },
  used_up: { status: 403, code: 'used_up' },
  disabled: { status: 403, code: 'disabled' },
  forbidden: { status: 403, code: 'forbidden' },
  not_found: { status: 404, code: 'not_found' },
  no_api: { status: 404, code: 'no_api' },
  request_timeout: { status: 408, code: 'request_timeout' },
  request_too_large: { status: 413, code: 'request_too_large' },
  unsupported_media_type: { status: 415, code: 'unsupported_media_type' },
  too_many_requests: { status: 429, code: 'too_many_requests' },
  headers_too_large: { status: 431, code: 'request_too_large' },
  api_error: { status: 500, code: 'api_error' },
  upstream_error: { status: 502, code: 'upstream_error' },
  upstream_unavailable: { status: 503, code: 'upstream_unavailable' },
  timeout: { status: 504, code: 'timeout' },
} as const satisfies Record<string, { status: number; code: string }>;

/** A row of the table. */
export type GatewayErrorName = keyof typeof GATEWAY_ERRORS;
/** What a client sees in `error.code`. */
export type ErrorCode = (typeof GATEWAY_ERRORS)[GatewayErrorName]['code'];

export interface ErrorEnvelope {
  success: false;
  error: { code: ErrorCode; message: string };
  trace_id: string;
}

/** Which of the gateway's limits refused a request (for the log line, metrics and usage). */
export type LimitName = 'rate_limit' | 'quota' | 'client_in_flight' | 'bytes_in_flight';

export interface GatewayErrorOptions {
  /** Extra response headers, e.g. `retry-after`. */
  headers?: Record<string, string>;
  cause?: unknown;
  /** The status of a framework 4xx that no row has (405, 411, …); the code stays the row's. */
  status?: number;
  /**
   * About this request only (its client's quota): a request merged into the call that failed
   * this way must not inherit the error, and tries on its own instead.
   */
  personal?: boolean;
  /** The upstream is unwell (unreachable, 5xx, no answer in time): the circuit breaker counts it. */
  upstreamFault?: boolean;
  /** The limit that refused the request. */
  limit?: LimitName;
}

export class GatewayError extends Error {
  override readonly name = 'GatewayError';
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly personal: boolean;
  readonly upstreamFault: boolean;
  readonly limit: LimitName | undefined;

  constructor(name: GatewayErrorName, message: string, options: GatewayErrorOptions = {}) {
    super(message, { cause: options.cause });
    const row = GATEWAY_ERRORS[name];
    this.code = row.code;
    this.statusCode = options.status ?? row.status;
    this.headers = options.headers ?? {};
    this.personal = options.personal === true;
    this.upstreamFault = options.upstreamFault === true;
    this.limit = options.limit;
  }

  /** The envelope for this error, carrying the request's trace id. */
  envelope(traceId: string): ErrorEnvelope {
    return { success: false, error: { code: this.code, message: this.message }, trace_id: traceId };
  }
}

/** Shape of the framework errors we translate; duck-typed to keep this file framework-free. */
interface FrameworkError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
  validation?: ReadonlyArray<{ instancePath?: string; message?: string }>;
  validationContext?: string;
}

const INTERNAL_ERROR_MESSAGE = 'internal gateway error; see the gateway log for this trace_id';

/** Fastify's body-parser errors, by code: what each means to a client. */
const PARSER_ERRORS: Readonly<Record<string, [GatewayErrorName, string]>> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [
    'unsupported_media_type',
    'content-type must be application/json',
  ],
  FST_ERR_CTP_BODY_TOO_LARGE: ['request_too_large', 'request body exceeds the body size limit'],
  FST_ERR_CTP_EMPTY_JSON_BODY: ['bad_request', 'request body is empty; expected a JSON object'],
  FST_ERR_CTP_INVALID_JSON_BODY: ['bad_request', 'request body is not valid JSON'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: ['bad_request', 'content-length does not match the body'],
};

/**
 * The row for a framework 4xx, by status. Explicit, not a scan of the table: several rows share a
 * status (403 is also `used_up` and `disabled`, which make an SDK stop for the account), and a
 * static file refused with 403 must not read as an exhausted balance.
 */
const FRAMEWORK_ROWS: Readonly<Record<number, GatewayErrorName>> = {
  401: 'invalid_token',
  403: 'forbidden',
  404: 'not_found',
  408: 'request_timeout',
  413: 'request_too_large',
  415: 'unsupported_media_type',
  429: 'too_many_requests',
  431: 'headers_too_large',
};

/** Statuses without a row keep their own status, with `bad_request`'s code. */
function rowForStatus(status: number): GatewayErrorName {
  return FRAMEWORK_ROWS[status] ?? 'bad_request';
}

/**
 * Turns anything thrown while serving a request into a GatewayError. A 4xx raised by a plugin
 * (static files, body parser, …) keeps its status: it is the client's request, not a bug.
 */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) return error;
  const err = (typeof error === 'object' && error !== null ? error : {}) as FrameworkError;
  if (Array.isArray(err.validation)) {
    return new GatewayError(
      'bad_request',
      describeValidation(err.validation, err.validationContext),
    );
  }
  const parser = typeof err.code === 'string' ? PARSER_ERRORS[err.code] : undefined;
  if (parser) return new GatewayError(parser[0], parser[1]);
  const status = typeof err.statusCode === 'number' ? err.statusCode : 500;
  if (status >= 400 && status < 500) {
    const name = rowForStatus(status);
    const message = status === 400 ? 'the request is malformed' : describeStatus(status);
    return new GatewayError(name, message, { status, cause: error });
  }
  return new GatewayError('api_error', INTERNAL_ERROR_MESSAGE, { cause: error });
}

function describeStatus(status: number): string {
  switch (status) {
    case 403:
      return 'access to this path is not allowed';
    case 404:
      return 'not found';
    default:
      return `the request was refused (HTTP ${status})`;
  }
}

/** "queries[0]: must be …; question: …" — names fields, never echoes their values. */
function describeValidation(
  issues: ReadonlyArray<{ instancePath?: string; message?: string }>,
  context = 'body',
): string {
  const parts = issues.slice(0, 5).map((issue) => {
    const path = (issue.instancePath ?? '')
      .split('/')
      .filter(Boolean)
      .map((segment) => (/^\d+$/.test(segment) ? `[${segment}]` : `.${segment}`))
      .join('');
    return `${context}${path}: ${issue.message ?? 'is invalid'}`;
  });
  const more = issues.length - 5;
  if (more > 0) parts.push(`and ${more} more problem${more === 1 ? '' : 's'}`);
  return parts.join('; ');
}
