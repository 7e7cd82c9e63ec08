/**
 * The clients file's format and its validation. Keys are stored only as SHA-256 hex:
 *
 *   { "clients": [ { "id": "checkout-service", "keySha256": "<64 hex>",
 *                    "rateLimit": { "max": 120, "windowSeconds": 60 },
 *                    "quota": { "upstreamCallsPerDay": 5000 },
 *                    "maxInFlight": 8 } ] }
 *
 * Every message built here names the source and the JSON path of each problem, and never a key
 * hash: these messages reach logs and the CLI's stderr.
 */
import { z } from 'zod';

/** Client ids end up in metric labels, log fields and usage fields (`<client>|<kind>`). */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

const CLIENT_ID_RULE = 'must be 1-64 characters from A-Z a-z 0-9 . _ -';

export const clientRecordSchema = z
  .object({
    id: z.string().regex(CLIENT_ID_PATTERN, { error: CLIENT_ID_RULE }),
    keySha256: z.string().regex(/^[0-9a-f]{64}$/, {
      error: 'must be the SHA-256 of the key as 64 lowercase hex characters',
    }),
    rateLimit: z
      .object({ max: z.int().positive(), windowSeconds: z.int().positive() })
      .strict()
      .optional(),
    quota: z.object({ upstreamCallsPerDay: z.int().positive() }).strict().optional(),
    /** Requests of this client in flight at once (default: CLIENT_MAX_IN_FLIGHT). */
    maxInFlight: z.int().positive().optional(),
  })
  .strict();

export const clientsFileSchema = z
  .object({ clients: z.array(clientRecordSchema) })
  .strict()
  .superRefine(
    (value, ctx) => {
      for (const issue of duplicateIssues(value)) ctx.addIssue({ code: 'custom', ...issue });
    },
    // Run even when other records are malformed, so one error lists every problem.
    { when: () => true },
  );

export type ClientRecord = z.infer<typeof clientRecordSchema>;
export type ClientsFile = z.infer<typeof clientsFileSchema>;

/**
 * The clients file (or an in-memory registry) is missing, unreadable or invalid. The message
 * names the source and the JSON path of every problem; it never contains a key hash.
 */
export class ClientRegistryError extends Error {
  override name = 'ClientRegistryError';
  /** The file does not exist (as opposed to unreadable or invalid). */
  readonly missing: boolean;
  constructor(message: string, options: ErrorOptions & { missing?: boolean } = {}) {
    super(message, options);
    this.missing = options.missing === true;
  }
}

/** The parsed clients file, or a {@link ClientRegistryError} listing every problem. */
export function validateClientsFile(json: unknown, source: string): ClientsFile {
  const result = clientsFileSchema.safeParse(json);
  if (result.success) return result.data;
  const lines = result.error.issues.flatMap(formatIssue);
  throw new ClientRegistryError(
    redactHashes(
      `invalid clients file ${source} (${lines.length} problem${lines.length === 1 ? '' : 's'}):\n` +
        lines.map((l) => `  - ${l}`).join('\n'),
    ),
  );
}

/** Belt and braces: no 64-hex run (a stored hash) ever reaches an error message. */
export function redactHashes(text: string): string {
  return text.replace(/[0-9a-fA-F]{64}/g, '<redacted>');
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => `${formatPath([...issue.path, key])}: unknown field`);
  }
  return [`${formatPath(issue.path)}: ${issue.message}`];
}

/** `clients[0].rateLimit.max`, in the style of JavaScript property access. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (typeof segment === 'string' && /^[A-Za-z_$][\w$]*$/.test(segment)) {
      out += out ? `.${segment}` : segment;
    } else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out || '(top level)';
}

type PathIssue = { path: (string | number)[]; message: string };

/** Duplicate ids and hashes, checked on possibly malformed input. */
function duplicateIssues(value: unknown): PathIssue[] {
  const clients = isObject(value) ? value.clients : undefined;
  if (!Array.isArray(clients)) return [];
  const issues: PathIssue[] = [];
  const firstById = new Map<string, number>();
  const firstByHash = new Map<string, number>();
  clients.forEach((record: unknown, index) => {
    if (!isObject(record)) return;
    const { id, keySha256 } = record;
    if (typeof id === 'string') {
      const first = firstById.get(id);
      if (first === undefined) firstById.set(id, index);
      else {
        issues.push({
          path: ['clients', index, 'id'],
          message: `duplicate id ${JSON.stringify(id)} (also clients[${first}])`,
        });
      }
    }
    if (typeof keySha256 === 'string') {
      const first = firstByHash.get(keySha256);
      if (first === undefined) firstByHash.set(keySha256, index);
      else {
        issues.push({
          path: ['clients', index, 'keySha256'],
          message: `same key hash as clients[${first}]; every client needs its own key`,
        });
      }
    }
  });
  return issues;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}
