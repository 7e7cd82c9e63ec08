// Async tasks (`"async": true` on either solving endpoint). A task's state is computed from the
// clock when it is read, so there are no timers, and a test that injects `now` controls it fully:
// `processing` until readyAfterMs has passed, then `ready`; a task not ready within the upstream's
// deadline (120 s, guides "captcha_tasks") is `failed` with a terminal 504 on every read.

import { randomUUID } from 'node:crypto';
import type { Solution } from './answers.ts';

export type TaskResult = { solution: Solution } | { token: string };

export interface Task {
  readonly id: string;
  /** The account that created it: nobody else may read it. */
  readonly account: string;
  readonly createdAt: number;
  /** Epoch ms at which the result is ready; Infinity for a task that never finishes. */
  readonly readyAt: number;
  readonly deadlineAt: number;
  readonly result: TaskResult;
}

export type TaskRead =
  | { state: 'not_found' }
  | { state: 'processing'; task: Task }
  | { state: 'ready'; task: Task }
  | { state: 'timeout'; task: Task };

export interface TaskStoreOptions {
  now: () => number;
  readyAfterMs: number;
  deadlineMs: number;
  /**
   * The oldest tasks are forgotten beyond this many, so a long benchmark cannot grow the fake
   * without bound (the upstream keeps tasks for a limited time too).
   */
  maxTasks?: number;
}

export class TaskStore {
  readonly #tasks = new Map<string, Task>();
  readonly #options: Required<TaskStoreOptions>;

  constructor(options: TaskStoreOptions) {
    this.#options = { maxTasks: 100_000, ...options };
  }

  create(account: string, result: TaskResult, opts: { neverReady?: boolean } = {}): Task {
    const createdAt = this.#options.now();
    const task: Task = {
      id: randomUUID(),
      account,
      createdAt,
      readyAt: opts.neverReady ? Number.POSITIVE_INFINITY : createdAt + this.#options.readyAfterMs,
      deadlineAt: createdAt + this.#options.deadlineMs,
      result,
    };
    this.#tasks.set(task.id, task);
    if (this.#tasks.size > this.#options.maxTasks) {
      const oldest = this.#tasks.keys().next();
      if (!oldest.done) this.#tasks.delete(oldest.value);
    }
    return task;
  }

  /** Reading never changes a task. Another account's task reads as not found. */
  read(id: string, account: string): TaskRead {
    const task = this.#tasks.get(id);
    if (!task || task.account !== account) return { state: 'not_found' };
    const now = this.#options.now();
    if (task.readyAt < task.deadlineAt) {
      return { state: now >= task.readyAt ? 'ready' : 'processing', task };
    }
    return { state: now >= task.deadlineAt ? 'timeout' : 'processing', task };
  }

  get size(): number {
    return this.#tasks.size;
  }

  clear(): void {
    this.#tasks.clear();
  }
}
