/**
 * /openapi.json (admin server) describes every forwarded route as the upstream's own spec does
 * (Ace Data Cloud's openapi/hcaptcha.json: request fields, statuses) plus what the gateway adds
 * (its own statuses, one security scheme), with real descriptions, one component per schema, and a
 * document that is structurally valid OpenAPI 3.0.
 */
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from './helpers.ts';

type Json = Record<string, unknown>;

let gateway: TestGateway;
let doc: Json;

beforeAll(async () => {
  gateway = await startGateway();
  const res = await gateway.admin.inject({ url: '/openapi.json' });
  expect(res.statusCode).toBe(200);
  doc = res.json();
});
afterAll(async () => {
  await gateway.close();
});

/** Follows a local `$ref` (a JSON pointer into the document); anything else is returned as is. */
function resolve(node: unknown): Json {
  let current = node as Json;
  for (let hops = 0; typeof current?.$ref === 'string'; hops++) {
    if (hops > 10) throw new Error('a $ref cycle');
    current = pointer(current.$ref as string) as Json;
  }
  return current;
}

function pointer(ref: string): unknown {
  if (!ref.startsWith('#/')) throw new Error(`not a local reference: ${ref}`);
  let node: unknown = doc;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (typeof node !== 'object' || node === null || !Object.hasOwn(node, key)) {
      throw new Error(`${ref} does not resolve`);
    }
    node = (node as Json)[key];
  }
  return node;
}

/** Every value of `key` anywhere under `node`, with where it is. */
function collect(node: unknown, key: string, at = '#', into: Array<[string, unknown]> = []) {
  if (Array.isArray(node)) {
    for (const [i, item] of node.entries()) collect(item, key, `${at}/${i}`, into);
  } else if (typeof node === 'object' && node !== null) {
    for (const [k, value] of Object.entries(node)) {
      if (k === key) into.push([at, value]);
      collect(value, key, `${at}/${k}`, into);
    }
  }
  return into;
}

const operation = (path: string): Json => {
  const item = (doc.paths as Record<string, Json>)[path];
  if (!item?.post) throw new Error(`no POST ${path} in the document`);
  return item.post as Json;
};

/** The application/json schema of a request body or response, its $ref followed. */
const jsonSchemaOf = (holder: unknown, what: string): Json => {
  const content = (holder as Json | undefined)?.content as Record<string, Json> | undefined;
  const schema = content?.['application/json']?.schema;
  if (schema === undefined) throw new Error(`${what} has no application/json schema`);
  return resolve(schema);
};
const requestSchema = (path: string) =>
  jsonSchemaOf(operation(path).requestBody, `the request body of ${path}`);
const responses = (path: string) => operation(path).responses as Record<string, Json>;
const responseSchema = (path: string, status: string) =>
  jsonSchemaOf(responses(path)[status], `the ${status} of ${path}`);

/**
 * The forwarded routes: the fields of the upstream's request bodies (openapi/hcaptcha.json, plus
 * the SDK poller's `id` / `action`), and the statuses of its spec and guides merged with the
 * gateway's own.
 */
const ROUTES = {
  '/captcha/recognition/hcaptcha': {
    fields: { queries: 'array', question: 'string', async: 'boolean' },
    required: ['queries'],
    // upstream: 200 400 401 403 404 429 500, 201 for async (guides)
    statuses: [200, 201, 400, 401, 403, 404, 408, 413, 415, 429, 431, 500, 502, 503, 504],
    success: { 200: 'solution', 201: 'task_id' },
  },
  '/captcha/token/hcaptcha': {
    fields: {
      website_key: 'string',
      website_url: 'string',
      rqdata: 'string',
      proxy: 'string',
      async: 'boolean',
    },
    required: ['website_key', 'website_url'],
    statuses: [200, 201, 400, 401, 403, 404, 408, 413, 415, 429, 431, 500, 502, 503, 504],
    success: { 200: 'token', 201: 'task_id' },
  },
  '/captcha/tasks': {
    fields: { task_id: 'string', id: 'string', action: 'string' },
    required: [],
    // upstream: 200 400 401 404, and the terminal 504 (guides)
    statuses: [200, 400, 401, 403, 404, 408, 413, 415, 429, 431, 500, 502, 503, 504],
    success: { 200: 'status' },
  },
} as const;

describe.each(Object.entries(ROUTES))('POST %s', (path, route) => {
  it("describes the upstream's request fields, each with its type and a description", () => {
    const schema = requestSchema(path);
    expect(schema.type).toBe('object');
    const properties = schema.properties as Record<string, Json>;
    for (const [field, type] of Object.entries(route.fields)) {
      expect(properties[field], field).toMatchObject({ type, description: expect.any(String) });
    }
    expect((schema.required as string[] | undefined) ?? []).toEqual(route.required);
    // Unknown fields pass through to the upstream, so the document must not forbid them.
    expect(schema.additionalProperties).not.toBe(false);
    if (path === '/captcha/recognition/hcaptcha') {
      expect(properties.queries?.items).toMatchObject({ type: 'string' });
    }
    if (path === '/captcha/tasks') expect(properties.action?.enum).toEqual(['retrieve']);
  });

  it("lists the upstream's statuses and the gateway's own, each with a real description", () => {
    const documented = responses(path);
    expect(Object.keys(documented).map(Number)).toEqual(route.statuses);
    for (const [status, response] of Object.entries(documented)) {
      expect(response.description, status).not.toBe('Default Response');
      expect(String(response.description).length, status).toBeGreaterThan(20);
      expect(Object.keys(response.content as Json), status).toEqual(['application/json']);
    }
  });

  it('documents the error envelope for every error status', () => {
    for (const status of route.statuses.filter((s) => s >= 400)) {
      const schema = responseSchema(path, String(status));
      const envelope = schema.anyOf
        ? (schema.anyOf as Json[]).map(resolve).find((s) => (s.properties as Json)?.error)
        : schema;
      expect(envelope?.properties, String(status)).toHaveProperty('error');
      expect(envelope?.required, String(status)).toEqual(['error']);
    }
  });

  it('documents the answers the clients read', () => {
    for (const [status, field] of Object.entries(route.success)) {
      const schema = responseSchema(path, status);
      expect(schema.properties, `${status} ${field}`).toHaveProperty(field);
      expect(schema.required, `${status} ${field}`).toContain(field);
    }
  });

  it('requires the gateway client key (the one security scheme)', () => {
    expect(operation(path).security).toEqual([{ clientKey: [] }]);
  });
});

describe('the document as a whole', () => {
  it('has one security scheme: the client key as a bearer token, on the captcha routes only', () => {
    const components = doc.components as Json;
    expect(components.securitySchemes).toEqual({
      clientKey: { type: 'http', scheme: 'bearer', description: expect.any(String) },
    });
    expect(doc.security).toBeUndefined();
    for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
      for (const op of Object.values(item) as Json[]) {
        if (path.startsWith('/captcha/')) expect(op.security, path).toEqual([{ clientKey: [] }]);
        else expect(op.security, path).toBeUndefined();
      }
    }
  });

  it('forwards exactly the three hCaptcha paths of the upstream', () => {
    expect(Object.keys(doc.paths as Json).filter((p) => p.startsWith('/captcha/'))).toEqual(
      Object.keys(ROUTES),
    );
  });

  it('has one component per schema, and uses every component', () => {
    const schemas = (doc.components as Json).schemas as Record<string, unknown>;
    const names = Object.keys(schemas);
    // The type provider's request-side twins (XInput beside X) must not both be there.
    for (const name of names) {
      if (name.endsWith('Input')) expect(names, name).not.toContain(name.slice(0, -5));
    }
    const bodies = names.map((name) => JSON.stringify(schemas[name]));
    expect(new Set(bodies).size, 'two components with the same definition').toBe(names.length);

    const used = new Set<string>();
    const { schemas: _, ...otherComponents } = doc.components as Json;
    const pending = collect({ ...doc, components: otherComponents }, '$ref').map(([, r]) => r);
    for (let ref = pending.pop(); ref !== undefined; ref = pending.pop()) {
      const name = String(ref).replace('#/components/schemas/', '');
      if (used.has(name)) continue;
      used.add(name);
      pending.push(...collect(schemas[name], '$ref').map(([, r]) => r));
    }
    expect(names.filter((name) => !used.has(name))).toEqual([]);
  });

  it('resolves every $ref', () => {
    const refs = collect(doc, '$ref');
    expect(refs.length).toBeGreaterThan(10);
    for (const [at, ref] of refs) {
      expect(() => pointer(String(ref)), at).not.toThrow();
    }
  });

  it('is structurally valid OpenAPI 3.0 (OAS 3.0.3 objects and the 3.0 Schema Object subset)', () => {
    const validate = compileStructure();
    const valid = validate(doc);
    expect(validate.errors ?? [], JSON.stringify(validate.errors, null, 1)).toEqual([]);
    expect(valid).toBe(true);
  });

  it.for([
    [
      'a response without a description',
      ['paths', '/captcha/tasks', 'post', 'responses', '200', 'description'],
      undefined,
    ],
    ['a 3.1 type array', ['components', 'schemas', 'ErrorEnvelope', 'type'], ['object', 'null']],
    ['a const (not in 3.0)', ['components', 'schemas', 'ErrorEnvelope', 'const'], 1],
    [
      'a $ref with siblings',
      [
        'paths',
        '/captcha/tasks',
        'post',
        'requestBody',
        'content',
        'application/json',
        'schema',
        'description',
      ],
      'x',
    ],
    ['an OpenAPI 3.1 version', ['openapi'], '3.1.0'],
  ] as const)('the structure check refuses %s', ([, at, value]) => {
    const broken = structuredClone(doc);
    let node = broken as Json;
    for (const key of at.slice(0, -1)) node = node[key] as Json;
    const last = at[at.length - 1] as string;
    if (value === undefined) delete node[last];
    else node[last] = value;
    expect(compileStructure()(broken)).toBe(false);
  });
});

// --- A JSON Schema for the parts of OpenAPI 3.0.3 this document uses ----------------------------
// No OAS 3.0 meta-schema is vendored here, so this is our own transcription of the specification's
// objects (https://spec.openapis.org/oas/v3.0.3): unknown keys are refused except x- extensions,
// and Schema Objects may use only 3.0's keywords (no `const`, type arrays, `$schema`, `examples`…,
// which JSON Schema tools emit and OpenAPI 3.0 does not have).

const extensions = { '^x-': {} };
const closed = (properties: Json, required: string[] = []) => ({
  type: 'object',
  properties,
  required,
  patternProperties: extensions,
  additionalProperties: false,
});
const mapOf = (ref: string) => ({ type: 'object', additionalProperties: { $ref: ref } });
const nonNegative = { type: 'integer', minimum: 0 };

const compileStructure = () => new Ajv({ allErrors: true, strict: true }).compile(OAS_30_STRUCTURE);

const OAS_30_STRUCTURE = {
  $ref: '#/definitions/document',
  definitions: {
    document: closed(
      {
        openapi: { type: 'string', pattern: '^3\\.0\\.\\d+$' },
        info: closed(
          {
            title: { type: 'string' },
            version: { type: 'string' },
            description: { type: 'string' },
          },
          ['title', 'version'],
        ),
        servers: { type: 'array' },
        paths: {
          type: 'object',
          patternProperties: { '^/': { $ref: '#/definitions/pathItem' }, ...extensions },
          additionalProperties: false,
        },
        components: closed({
          schemas: mapOf('#/definitions/schemaOrRef'),
          responses: { type: 'object' },
          securitySchemes: mapOf('#/definitions/securityScheme'),
        }),
        security: { $ref: '#/definitions/security' },
        tags: {
          type: 'array',
          items: closed({ name: { type: 'string' }, description: { type: 'string' } }, ['name']),
        },
        externalDocs: { type: 'object' },
      },
      ['openapi', 'info', 'paths'],
    ),
    pathItem: closed(
      Object.fromEntries(
        ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'].map((m) => [
          m,
          { $ref: '#/definitions/operation' },
        ]),
      ),
    ),
    operation: closed(
      {
        tags: { type: 'array', items: { type: 'string' } },
        summary: { type: 'string' },
        description: { type: 'string' },
        operationId: { type: 'string' },
        parameters: { type: 'array' },
        requestBody: closed(
          {
            description: { type: 'string' },
            required: { type: 'boolean' },
            content: mapOf('#/definitions/mediaType'),
          },
          ['content'],
        ),
        responses: {
          type: 'object',
          minProperties: 1,
          patternProperties: {
            '^([1-5](\\d\\d|XX)|default)$': { $ref: '#/definitions/response' },
            ...extensions,
          },
          additionalProperties: false,
        },
        deprecated: { type: 'boolean' },
        security: { $ref: '#/definitions/security' },
      },
      ['responses'],
    ),
    response: closed(
      {
        description: { type: 'string' },
        headers: { type: 'object' },
        content: mapOf('#/definitions/mediaType'),
      },
      ['description'],
    ),
    mediaType: closed({
      schema: { $ref: '#/definitions/schemaOrRef' },
      example: {},
      examples: { type: 'object' },
    }),
    security: {
      type: 'array',
      items: { type: 'object', additionalProperties: { type: 'array', items: { type: 'string' } } },
    },
    securityScheme: closed(
      {
        type: { enum: ['apiKey', 'http', 'oauth2', 'openIdConnect'] },
        scheme: { type: 'string' },
        bearerFormat: { type: 'string' },
        description: { type: 'string' },
        name: { type: 'string' },
        in: { enum: ['query', 'header', 'cookie'] },
      },
      ['type'],
    ),
    reference: {
      type: 'object',
      properties: { $ref: { type: 'string' } },
      required: ['$ref'],
      additionalProperties: false,
    },
    schemaOrRef: {
      oneOf: [{ $ref: '#/definitions/reference' }, { $ref: '#/definitions/schema' }],
    },
    schema: closed({
      title: { type: 'string' },
      multipleOf: { type: 'number', exclusiveMinimum: 0 },
      maximum: { type: 'number' },
      exclusiveMaximum: { type: 'boolean' },
      minimum: { type: 'number' },
      exclusiveMinimum: { type: 'boolean' },
      maxLength: nonNegative,
      minLength: nonNegative,
      pattern: { type: 'string' },
      maxItems: nonNegative,
      minItems: nonNegative,
      uniqueItems: { type: 'boolean' },
      maxProperties: nonNegative,
      minProperties: nonNegative,
      required: { type: 'array', items: { type: 'string' }, minItems: 1, uniqueItems: true },
      enum: { type: 'array', minItems: 1 },
      type: { enum: ['array', 'boolean', 'integer', 'number', 'object', 'string'] },
      not: { $ref: '#/definitions/schemaOrRef' },
      allOf: { type: 'array', items: { $ref: '#/definitions/schemaOrRef' } },
      oneOf: { type: 'array', items: { $ref: '#/definitions/schemaOrRef' } },
      anyOf: { type: 'array', items: { $ref: '#/definitions/schemaOrRef' } },
      items: { $ref: '#/definitions/schemaOrRef' },
      properties: mapOf('#/definitions/schemaOrRef'),
      additionalProperties: {
        oneOf: [{ $ref: '#/definitions/schemaOrRef' }, { type: 'boolean' }],
      },
      description: { type: 'string' },
      format: { type: 'string' },
      default: {},
      nullable: { type: 'boolean' },
      readOnly: { type: 'boolean' },
      writeOnly: { type: 'boolean' },
      example: {},
      deprecated: { type: 'boolean' },
    }),
  },
};
