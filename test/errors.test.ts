// The one error table (src/errors.ts): every error the gateway itself produces, the envelope it
// builds, and how anything thrown while serving a request becomes one of its rows.
import { errorCodes } from 'fastify';
import { describe, expect, it } from 'vitest';
import {
  GATEWAY_ERRORS,
  GatewayError,
  type GatewayErrorName,
  toGatewayError,
} from '../src/errors.ts';

/**
 * The contract: row → status and the code clients see. Codes are the upstream's own where one
 * exists, so an SDK raises the same exception class; 431 shares 413's code.
 */
const CONTRACT: Record<GatewayErrorName, { status: number; code: string }> = {
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
};

describe('GATEWAY_ERRORS', () => {
  it('is exactly the contract', () => {
    expect({ ...GATEWAY_ERRORS }).toStrictEqual(CONTRACT);
  });

  it.each(Object.entries(CONTRACT))('GatewayError(%s) answers %o', (name, row) => {
    const error = new GatewayError(name as GatewayErrorName, 'msg');
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe('GatewayError');
    expect(error.statusCode).toBe(row.status);
    expect(error.code).toBe(row.code);
    expect(error.message).toBe('msg');
    expect(error.headers).toEqual({});
    expect(error.personal).toBe(false);
    expect(error.upstreamFault).toBe(false);
    expect(error.limit).toBeUndefined();
  });

  it('carries headers, a cause, a status of its own and the flags it is given', () => {
    const cause = new Error('root');
    const error = new GatewayError('too_many_requests', 'slow down', {
      headers: { 'retry-after': '3' },
      cause,
      limit: 'quota',
      personal: true,
    });
    expect(error.headers).toEqual({ 'retry-after': '3' });
    expect(error.cause).toBe(cause);
    expect(error.limit).toBe('quota');
    expect(error.personal).toBe(true);
    const framework = new GatewayError('bad_request', 'x', { status: 416, upstreamFault: true });
    expect(framework.statusCode).toBe(416);
    expect(framework.code).toBe('bad_request');
    expect(framework.upstreamFault).toBe(true);
  });
});

describe('GatewayError.envelope', () => {
  it("is the upstream's envelope, with the request's trace id and nothing else", () => {
    const envelope = new GatewayError('headers_too_large', 'too big').envelope('trace-1');
    expect(envelope).toStrictEqual({
      success: false,
      error: { code: 'request_too_large', message: 'too big' },
      trace_id: 'trace-1',
    });
    expect(JSON.stringify(envelope)).toBe(
      '{"success":false,"error":{"code":"request_too_large","message":"too big"},"trace_id":"trace-1"}',
    );
  });

  it('never carries headers, the cause or the flags', () => {
    const error = new GatewayError('too_many_requests', 'm', {
      headers: { 'retry-after': '9' },
      cause: new Error('secret cause'),
      limit: 'rate_limit',
    });
    expect(JSON.stringify(error.envelope('t'))).not.toMatch(/retry|secret|rate_limit/);
  });
});

describe('toGatewayError', () => {
  it('returns a GatewayError unchanged', () => {
    const error = new GatewayError('invalid_token', 'missing key');
    expect(toGatewayError(error)).toBe(error);
  });

  it.each([
    [
      'FST_ERR_CTP_INVALID_MEDIA_TYPE',
      'unsupported_media_type',
      415,
      'content-type must be application/json',
    ],
    [
      'FST_ERR_CTP_BODY_TOO_LARGE',
      'request_too_large',
      413,
      'request body exceeds the body size limit',
    ],
    [
      'FST_ERR_CTP_EMPTY_JSON_BODY',
      'bad_request',
      400,
      'request body is empty; expected a JSON object',
    ],
    ['FST_ERR_CTP_INVALID_JSON_BODY', 'bad_request', 400, 'request body is not valid JSON'],
    [
      'FST_ERR_CTP_INVALID_CONTENT_LENGTH',
      'bad_request',
      400,
      'content-length does not match the body',
    ],
  ] as const)('maps Fastify %s to %s %i', (name, code, status, message) => {
    const error = toGatewayError(new errorCodes[name]());
    expect(error).toBeInstanceOf(GatewayError);
    expect([error.code, error.statusCode, error.message]).toEqual([code, status, message]);
  });

  it('maps a programmer error (a bad parser registration) to api_error: a bug, not the client', () => {
    const error = toGatewayError(new errorCodes.FST_ERR_CTP_INVALID_TYPE());
    expect([error.code, error.statusCode]).toEqual(['api_error', 500]);
  });

  /** A plugin's 4xx (static files, send, …) keeps its status; the row says which code. */
  const frameworkError = (statusCode: number, message = 'plugin detail /etc/passwd') =>
    Object.assign(new Error(message), { statusCode });

  it.each([
    [400, 'bad_request', 'the request is malformed'],
    [401, 'invalid_token', 'the request was refused (HTTP 401)'],
    [403, 'forbidden', 'access to this path is not allowed'],
    [404, 'not_found', 'not found'],
    [405, 'bad_request', 'the request was refused (HTTP 405)'],
    [406, 'bad_request', 'the request was refused (HTTP 406)'],
    [408, 'request_timeout', 'the request was refused (HTTP 408)'],
    [411, 'bad_request', 'the request was refused (HTTP 411)'],
    [412, 'bad_request', 'the request was refused (HTTP 412)'],
    [413, 'request_too_large', 'the request was refused (HTTP 413)'],
    [415, 'unsupported_media_type', 'the request was refused (HTTP 415)'],
    [416, 'bad_request', 'the request was refused (HTTP 416)'],
    [429, 'too_many_requests', 'the request was refused (HTTP 429)'],
    [431, 'request_too_large', 'the request was refused (HTTP 431)'],
  ])('a framework %i keeps its status, with code %s', (status, code, message) => {
    const original = frameworkError(status);
    const error = toGatewayError(original);
    expect([error.statusCode, error.code, error.message]).toEqual([status, code, message]);
    expect(error.cause).toBe(original);
  });

  it('never turns a framework 403 into an account code (used_up, disabled)', () => {
    // An SDK stops for the account on used_up (InsufficientBalanceError) or disabled.
    expect(toGatewayError(frameworkError(403)).code).toBe('forbidden');
  });

  it('never echoes the framework message, which may hold a path or a value', () => {
    for (const status of [400, 403, 404, 405, 416]) {
      expect(toGatewayError(frameworkError(status)).message).not.toContain('/etc/passwd');
    }
  });

  it.each([
    ['a string', 'boom secret'],
    ['null', null],
    ['undefined', undefined],
    ['a number', 42],
    [
      'an error with an unknown code',
      Object.assign(new Error('secret detail'), { code: 'ECONNRESET' }),
    ],
    ['an error with a 5xx status', Object.assign(new Error('secret detail'), { statusCode: 503 })],
    ['an error with a 3xx status', Object.assign(new Error('secret detail'), { statusCode: 302 })],
    ['a plain Error', new Error('connection string postgres://admin:hunter2@db failed')],
  ])('turns %s into api_error, naming the trace id and nothing of the cause', (_name, thrown) => {
    const error = toGatewayError(thrown);
    expect([error.code, error.statusCode]).toEqual(['api_error', 500]);
    expect(error.message).toBe('internal gateway error; see the gateway log for this trace_id');
  });

  describe('validation errors', () => {
    const validation = (
      issues: Array<{ instancePath?: string; message?: string }>,
      context?: string,
    ) =>
      Object.assign(new Error('validation failed'), {
        statusCode: 400,
        code: 'FST_ERR_VALIDATION',
        validation: issues,
        ...(context === undefined ? {} : { validationContext: context }),
      });

    it('formats a path as body.queries[0]: message', () => {
      const error = toGatewayError(
        validation([{ instancePath: '/queries/0', message: 'must be a PNG image' }], 'body'),
      );
      expect([error.code, error.statusCode, error.message]).toEqual([
        'bad_request',
        400,
        'body.queries[0]: must be a PNG image',
      ]);
    });

    it('joins several issues with "; " and formats nested paths', () => {
      const error = toGatewayError(
        validation([
          { instancePath: '/question', message: 'must be a string' },
          { instancePath: '/options/grid/2/size', message: 'too big' },
          { instancePath: '', message: 'is not an object' },
          { instancePath: '/async' },
        ]),
      );
      expect(error.message).toBe(
        'body.question: must be a string; body.options.grid[2].size: too big; body: is not an object; body.async: is invalid',
      );
    });

    it('uses the validation context when given', () => {
      expect(
        toGatewayError(validation([{ instancePath: '/limit', message: 'bad' }], 'querystring'))
          .message,
      ).toBe('querystring.limit: bad');
    });

    it('lists at most 5 issues and says how many more there are', () => {
      const issues = (n: number) =>
        Array.from({ length: n }, (_, i) => ({ instancePath: `/queries/${i}`, message: `m${i}` }));
      expect(toGatewayError(validation(issues(5))).message.split('; ')).toHaveLength(5);
      expect(toGatewayError(validation(issues(6))).message).toMatch(/; and 1 more problem$/);
      expect(toGatewayError(validation(issues(8))).message.split('; ')).toEqual([
        'body.queries[0]: m0',
        'body.queries[1]: m1',
        'body.queries[2]: m2',
        'body.queries[3]: m3',
        'body.queries[4]: m4',
        'and 3 more problems',
      ]);
    });

    it('takes precedence over the error code', () => {
      const error = Object.assign(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE(), {
        validation: [{ instancePath: '/question', message: 'x' }],
      });
      expect(toGatewayError(error).code).toBe('bad_request');
    });
  });
});
