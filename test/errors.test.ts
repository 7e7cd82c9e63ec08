import { errorCodes } from 'fastify';
import { describe, expect, it } from 'vitest';
import {
  errorEnvelope,
  GATEWAY_ERRORS,
  GatewayError,
  type GatewayErrorCode,
  toGatewayError,
} from '../src/errors.ts';

/** design.md → "Errors the gateway itself produces". */
const DESIGN_TABLE: Record<string, number> = {
  bad_request: 400,
  invalid_token: 401,
  no_api: 404,
  request_too_large: 413,
  unsupported_media_type: 415,
  too_many_requests: 429,
  upstream_error: 502,
  upstream_unavailable: 503,
  timeout: 504,
  api_error: 500,
};

describe('GATEWAY_ERRORS', () => {
  it('matches the design error table exactly', () => {
    expect({ ...GATEWAY_ERRORS }).toStrictEqual(DESIGN_TABLE);
  });

  it.each(Object.entries(DESIGN_TABLE))('GatewayError(%s) has status %i', (code, status) => {
    const error = new GatewayError(code as GatewayErrorCode, 'msg');
    expect(error.statusCode).toBe(status);
    expect(error.code).toBe(code);
    expect(error.message).toBe('msg');
    expect(error.name).toBe('GatewayError');
    expect(error).toBeInstanceOf(Error);
    expect(error.headers).toEqual({});
  });

  it('carries extra headers and a cause', () => {
    const cause = new Error('root');
    const error = new GatewayError('too_many_requests', 'slow down', {
      headers: { 'retry-after': '3' },
      cause,
    });
    expect(error.headers).toEqual({ 'retry-after': '3' });
    expect(error.cause).toBe(cause);
  });
});

describe('errorEnvelope', () => {
  it('has the upstream envelope shape', () => {
    expect(errorEnvelope('no_api', 'no route for GET /x', 'trace-1')).toStrictEqual({
      success: false,
      error: { code: 'no_api', message: 'no route for GET /x' },
      trace_id: 'trace-1',
    });
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
      new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE(),
      'unsupported_media_type',
      415,
    ],
    // A programmer error (bad parser registration), never a client's: it is a bug.
    ['FST_ERR_CTP_INVALID_TYPE', new errorCodes.FST_ERR_CTP_INVALID_TYPE(), 'api_error', 500],
    [
      'FST_ERR_CTP_BODY_TOO_LARGE',
      new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE(),
      'request_too_large',
      413,
    ],
    [
      'FST_ERR_CTP_EMPTY_JSON_BODY',
      new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY(),
      'bad_request',
      400,
    ],
    [
      'FST_ERR_CTP_INVALID_JSON_BODY',
      new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY(),
      'bad_request',
      400,
    ],
    [
      'FST_ERR_CTP_INVALID_CONTENT_LENGTH',
      new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH(),
      'bad_request',
      400,
    ],
  ])('maps Fastify %s to %s', (_name, fastifyError, code, status) => {
    const error = toGatewayError(fastifyError);
    expect(error).toBeInstanceOf(GatewayError);
    expect(error.code).toBe(code);
    expect(error.statusCode).toBe(status);
    expect(error.message.length).toBeGreaterThan(0);
  });

  it('gives each Fastify body error a specific message', () => {
    expect(toGatewayError(new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE()).message).toBe(
      'content-type must be application/json',
    );
    expect(toGatewayError(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE()).message).toContain(
      'body size limit',
    );
    expect(toGatewayError(new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY()).message).toContain('empty');
    expect(toGatewayError(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY()).message).toBe(
      'request body is not valid JSON',
    );
  });

  it('maps a code-less 400 (e.g. a JSON parser SyntaxError) to bad_request', () => {
    const syntax = Object.assign(new SyntaxError('Unexpected token } in JSON at position 7'), {
      statusCode: 400,
    });
    const error = toGatewayError(syntax);
    expect(error.code).toBe('bad_request');
    expect(error.message).toBe('request body is not valid JSON');
    expect(error.message).not.toContain('position 7');
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
        validation(
          [{ instancePath: '/queries/0', message: 'must be a PNG, JPEG, GIF or WebP image' }],
          'body',
        ),
      );
      expect(error.code).toBe('bad_request');
      expect(error.statusCode).toBe(400);
      expect(error.message).toBe('body.queries[0]: must be a PNG, JPEG, GIF or WebP image');
    });

    it('joins several issues with "; " and formats nested paths', () => {
      const error = toGatewayError(
        validation([
          { instancePath: '/question', message: 'must not be empty' },
          { instancePath: '/options/grid/2/size', message: 'too big' },
          { instancePath: '', message: 'is not an object' },
          { instancePath: '/async' },
        ]),
      );
      expect(error.message).toBe(
        'body.question: must not be empty; body.options.grid[2].size: too big; body: is not an object; body.async: is invalid',
      );
    });

    it('uses the validation context when given', () => {
      const error = toGatewayError(
        validation([{ instancePath: '/limit', message: 'bad' }], 'querystring'),
      );
      expect(error.message).toBe('querystring.limit: bad');
    });

    it('lists exactly 5 issues without a tail', () => {
      const issues = Array.from({ length: 5 }, (_, i) => ({
        instancePath: `/queries/${i}`,
        message: `m${i}`,
      }));
      const message = toGatewayError(validation(issues)).message;
      expect(message.split('; ')).toHaveLength(5);
      expect(message).not.toContain('more problem');
    });

    it('says "1 more problem" in the singular', () => {
      const issues = Array.from({ length: 6 }, (_, i) => ({
        instancePath: `/q/${i}`,
        message: 'x',
      }));
      expect(toGatewayError(validation(issues)).message).toMatch(/; and 1 more problem$/);
    });

    it('caps at 5 issues and says how many more there are', () => {
      const issues = Array.from({ length: 8 }, (_, i) => ({
        instancePath: `/queries/${i}`,
        message: `m${i}`,
      }));
      const parts = toGatewayError(validation(issues)).message.split('; ');
      expect(parts).toEqual([
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

  it('turns an unknown Error into api_error with a generic message', () => {
    const original = new Error('connection string postgres://admin:hunter2@db failed');
    const error = toGatewayError(original);
    expect(error.code).toBe('api_error');
    expect(error.statusCode).toBe(500);
    expect(error.message).not.toContain('hunter2');
    expect(error.message).not.toContain(original.message);
    expect(error.message).toContain('trace_id');
    expect(error.cause).toBe(original);
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
    [
      'an error with a non-400 status',
      Object.assign(new Error('secret detail'), { statusCode: 503 }),
    ],
  ])('turns %s into api_error', (_name, thrown) => {
    const error = toGatewayError(thrown);
    expect(error.code).toBe('api_error');
    expect(error.statusCode).toBe(500);
    expect(error.message).not.toContain('secret');
  });
});
