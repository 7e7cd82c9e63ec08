/**
 * Client registry: the gateway's own API keys, one immutable set.
 *
 * Keys are random (see {@link generateClientKey}), shown once by the `clients` CLI and stored
 * only as SHA-256 hex in the clients file (`GATEWAY_CLIENTS_FILE`; format in ./schema.ts).
 * Running gateways hold a {@link ClientRegistry} through a reloadable ClientDirectory
 * (./directory.ts), which swaps in a new registry when the file changes.
 *
 * No Fastify here: the auth plugin parses the bearer header and calls `authenticate` with the
 * raw key.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readClientsJson } from './file.ts';
import { type ClientRecord, validateClientsFile } from './schema.ts';

export { readClientsFile, writeClientsFile } from './file.ts';
export {
  CLIENT_ID_PATTERN,
  type ClientRecord,
  ClientRegistryError,
  type ClientsFile,
  clientRecordSchema,
  clientsFileSchema,
} from './schema.ts';

/** Longest key {@link ClientRegistry.authenticate} will hash; generated keys are 47 chars. */
export const MAX_CLIENT_KEY_LENGTH = 512;

/** Prefix of generated keys; makes leaked keys easy to recognise (and to grep for). */
export const CLIENT_KEY_PREFIX = 'agw_';

/** SHA-256 hex of the UTF-8 key: the form stored in the clients file. */
export function hashClientKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** `agw_` + base64url of 32 random bytes (256 bits of entropy, 43 characters). */
export function generateClientKey(): string {
  return CLIENT_KEY_PREFIX + randomBytes(32).toString('base64url');
}

export class ClientRegistry {
  readonly ids: readonly string[];
  readonly size: number;
  readonly #records: readonly ClientRecord[];
  readonly #digests: readonly Buffer[];
  readonly #byId: ReadonlyMap<string, ClientRecord>;

  /** Throws {@link ClientRegistryError} on invalid records, duplicate ids or duplicate hashes. */
  constructor(records: readonly ClientRecord[]) {
    const file = validateClientsFile({ clients: records }, 'client records');
    this.#records = Object.freeze(file.clients.map(freezeRecord));
    this.#digests = this.#records.map((r) => Buffer.from(r.keySha256, 'hex'));
    this.#byId = new Map(this.#records.map((r) => [r.id, r]));
    this.ids = Object.freeze(this.#records.map((r) => r.id));
    this.size = this.#records.length;
  }

  /**
   * Load the clients file. Missing, unreadable or invalid → ClientRegistryError (`missing` tells
   * the first apart).
   */
  static async fromFile(path: string): Promise<ClientRegistry> {
    return ClientRegistry.parse(await readClientsJson(path), path);
  }

  /** Validate an in-memory object shaped like the clients file; `source` names it in errors. */
  static parse(json: unknown, source: string): ClientRegistry {
    return new ClientRegistry(validateClientsFile(json, source).clients);
  }

  /**
   * The client owning `presentedKey`, or undefined. Compares the key's digest with every stored
   * digest in constant time and without early exit, so timing reveals neither whether nor which
   * client matched. Empty, missing or over-long keys are rejected without hashing.
   */
  authenticate(presentedKey: string | undefined): ClientRecord | undefined {
    if (!presentedKey || presentedKey.length > MAX_CLIENT_KEY_LENGTH) return undefined;
    const digest = createHash('sha256').update(presentedKey, 'utf8').digest();
    let match = -1;
    for (let i = 0; i < this.#digests.length; i++) {
      const equal = timingSafeEqual(digest, this.#digests[i] as Buffer);
      // Branch-free select: hashes are unique, so at most one index matches.
      match = equal ? i : match;
    }
    return match === -1 ? undefined : this.#records[match];
  }

  get(id: string): ClientRecord | undefined {
    return this.#byId.get(id);
  }

  has(id: string): boolean {
    return this.#byId.has(id);
  }

  /** Every record, in file order (key hashes included: never log these). */
  records(): readonly ClientRecord[] {
    return this.#records;
  }
}

function freezeRecord(record: ClientRecord): ClientRecord {
  if (record.rateLimit) Object.freeze(record.rateLimit);
  if (record.quota) Object.freeze(record.quota);
  return Object.freeze(record);
}
