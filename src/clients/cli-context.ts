import type { EnvConfig } from '../config.ts';

export interface ClientsCliIo {
  stdout(s: string): void;
  stderr(s: string): void;
  env: NodeJS.ProcessEnv;
}

/** A problem with the request or the environment: message only, exit 1. */
export class CliError extends Error {}

/** What a command gets: its client id, options, output, and the settings it needs. */
export interface CommandContext {
  /** The client id argument ('' when none was given). */
  id: string;
  /** The clients file: --file, else GATEWAY_CLIENTS_FILE. */
  file: string;
  json: boolean;
  values: Readonly<Record<string, string | boolean | undefined>>;
  io: ClientsCliIo;
  /** Validated settings (the server's schema); a bad value is a CliError naming it. */
  settings<K extends keyof EnvConfig>(names: readonly K[]): Pick<EnvConfig, K>;
}
