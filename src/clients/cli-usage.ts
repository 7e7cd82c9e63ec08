import { formatUsageTable, type UsageReport } from '../usage/report.ts';
import {
  adminBaseUrl,
  type OneClientUsage,
  UsageSourceError,
  usageFromAdmin,
  usageFromRedis,
} from '../usage/sources.ts';
import { CliError, type CommandContext } from './cli-context.ts';
import { ClientRegistry, readClientsFile } from './registry.ts';

/**
 * `usage [id]`: today's usage. With REDIS_URL, from Redis (every replica), limits from the
 * clients file; if Redis cannot be read, or without REDIS_URL, from the gateway's admin port.
 */
export async function usageCommand(ctx: CommandContext): Promise<number> {
  const { REDIS_URL, ADMIN_HOST, ADMIN_PORT } = ctx.settings([
    'REDIS_URL',
    'ADMIN_HOST',
    'ADMIN_PORT',
  ]);
  const only = ctx.id === '' ? undefined : ctx.id;
  const failures: string[] = [];
  let report: UsageReport | OneClientUsage | undefined;
  let found = true;

  if (REDIS_URL !== undefined) {
    try {
      const clients = new ClientRegistry((await readClientsFile(ctx.file)).clients);
      const all = await usageFromRedis(REDIS_URL, clients);
      const client = only === undefined ? undefined : all.clients.find((c) => c.id === only);
      found = only === undefined || client !== undefined;
      report = client ? { day: all.day, source: all.source, client } : all;
    } catch (err) {
      if (!(err instanceof UsageSourceError)) throw err;
      failures.push(err.message);
    }
  }
  if (report === undefined && found) {
    const base = adminBaseUrl(ADMIN_HOST, ADMIN_PORT);
    try {
      report = only === undefined ? await usageFromAdmin(base) : await usageFromAdmin(base, only);
      found = report !== undefined;
    } catch (err) {
      if (!(err instanceof UsageSourceError)) throw err;
      failures.push(err.message);
    }
  }
  if (!found) {
    throw new CliError(`no client "${only}" in ${ctx.file}, and no usage counted for it today`);
  }
  if (report === undefined) {
    throw new CliError(
      `cannot read usage: ${failures.join('; ')}.\n` +
        (REDIS_URL === undefined
          ? 'Start the gateway (or set ADMIN_HOST/ADMIN_PORT to its admin port), or set REDIS_URL to read the counts every replica shares.'
          : 'Check REDIS_URL, or that a gateway is running with its admin port at ADMIN_HOST/ADMIN_PORT.'),
    );
  }
  ctx.io.stdout(ctx.json ? `${JSON.stringify(report)}\n` : formatUsageTable(asReport(report)));
  return 0;
}

function asReport(report: UsageReport | OneClientUsage): UsageReport {
  return 'client' in report
    ? { day: report.day, source: report.source, clients: [report.client] }
    : report;
}
