import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import { MemoryTaskOwners, RedisTaskOwners, type TaskOwners } from '../tasks/owners.ts';

declare module 'fastify' {
  interface FastifyInstance {
    taskOwners: TaskOwners;
  }
}

export interface TasksPluginOptions {
  /** Task ids remembered per replica (in memory; always, as Redis's fallback). */
  maxEntries: number;
}

/**
 * Remembers which client created each async task. Always in memory; also in Redis when it is
 * configured, so every replica can answer a poll. A Redis failure never fails a request: the
 * memory copy answers (on this replica).
 */
const tasks: FastifyPluginAsync<TasksPluginOptions> = async (app, options) => {
  const local = new MemoryTaskOwners({ maxEntries: options.maxEntries });
  const redis = app.redis?.client;
  const shared = redis ? new RedisTaskOwners(redis) : undefined;
  const onError = (error: unknown) => app.log.debug({ err: error }, 'task owner store error');
  app.decorate('taskOwners', {
    async record(taskId: string, clientId: string) {
      await local.record(taskId, clientId);
      await shared?.record(taskId, clientId).catch(onError);
    },
    async ownerOf(taskId: string) {
      if (shared) {
        try {
          const owner = await shared.ownerOf(taskId);
          if (owner !== undefined) return owner;
        } catch (error) {
          onError(error);
        }
      }
      return local.ownerOf(taskId);
    },
  } satisfies TaskOwners);
};

export default fp(tasks, { name: 'tasks', fastify: '5.x', dependencies: ['redis'] });
