/**
 * Every error the gateway itself produces, in one place (design.md → "Errors the gateway itself
 * produces"). Free of Fastify imports so the core can throw these too.
 */
export const GATEWAY_ERRORS = {
  bad_request: 400,
  invalid_token: 401,
  no_api: 404,
  request_too_large: 413,
  unsupported_media_type: 415,
  too_many_requests: 429,
  api_error: 500,
  upstream_error: 502,
  upstream_unavailable: 503,
  timeout: 504,
} as const;

export type GatewayErrorCode = keyof typeof GATEWAY_ERRORS;

export interface ErrorEnvelope {
  success: false;
  error: { code: string; message: string };
  trace_id: string;
}

export class GatewayError extends Error {
  readonly code: GatewayErrorCode;
  readonly statusCode: number;
  /** Extra response headers, e.g. `retry-after`. */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    code: GatewayErrorCode,
    message: string,
    options: { headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.statusCode = GATEWAY_ERRORS[code];
    this.headers = options.headers ?? {};
  }
}

export function errorEnvelope(code: string, message: string, traceId: string): ErrorEnvelope {
  return { success: false, error: { code, message }, trace_id: traceId };
}

/** Shape of the framework errors we translate; duck-typed to keep this file framework-free. */
interface FrameworkError {
  code?: unknown;
  statusCode?: unknown;
  validation?: ReadonlyArray<{ instancePath?: string; message?: string }>;
  validationContext?: string;
}

const INTERNAL_ERROR_MESSAGE = 'internal gateway error; see the gateway log for this trace_id';

/** Turns anything thrown while serving a request into a GatewayError. */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) return error;
  const err = (typeof error === 'object' && error !== null ? error : {}) as FrameworkError;
  if (Array.isArray(err.validation)) {
    return new GatewayError(
      'bad_request',
      describeValidation(err.validation, err.validationContext),
    );
  }
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GatewayError('unsupported_media_type', 'content-type must be application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError('request_too_large', 'request body exceeds the body size limit');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new GatewayError('bad_request', 'request body is empty; expected a JSON object');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new GatewayError('bad_request', 'request body is not valid JSON');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GatewayError('bad_request', 'content-length does not match the body');
  }
  // secure-json-parse and JSON.parse failures surface as 400s with no specific code.
  if (err.statusCode === 400)
    return new GatewayError('bad_request', 'request body is not valid JSON');
  return new GatewayError('api_error', INTERNAL_ERROR_MESSAGE, { cause: error });
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
