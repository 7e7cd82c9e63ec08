// Every API call the fake receives, as it received it, for tests to assert on and wait for.

import type { IncomingMessage, ServerResponse } from 'node:http';

export interface RecordedCall {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  token: string | undefined;
  rawBody: string;
  body: unknown;
  /** Epoch ms (the fake's clock) at which the call arrived. */
  at: number;
  /** True once the connection closed before a reply was sent (client abort, or a reset fault). */
  closedEarly: boolean;
}

export class CallLog {
  /** One array for the fake's lifetime: tests may hold on to it across resets. */
  readonly calls: RecordedCall[] = [];
  readonly #waiters = new Set<{ count: number; resolve: () => void }>();

  record(
    req: IncomingMessage,
    res: ServerResponse,
    call: Omit<RecordedCall, 'closedEarly' | 'headers' | 'method'>,
  ): void {
    const record: RecordedCall = {
      method: req.method ?? 'GET',
      headers: { ...req.headers },
      ...call,
      closedEarly: false,
    };
    this.calls.push(record);
    res.once('close', () => {
      if (!res.writableFinished) record.closedEarly = true;
    });
    this.#wake();
  }

  count(path?: string): number {
    return path === undefined
      ? this.calls.length
      : this.calls.filter((c) => c.path === path).length;
  }

  /** Resolves once this many calls were recorded (since the last clear), at once if they were. */
  waitFor(count: number): Promise<void> {
    return new Promise((resolve) => {
      this.#waiters.add({ count, resolve });
      this.#wake();
    });
  }

  clear(): void {
    this.calls.length = 0;
  }

  #wake(): void {
    for (const waiter of this.#waiters) {
      if (this.calls.length >= waiter.count) {
        this.#waiters.delete(waiter);
        waiter.resolve();
      }
    }
  }
}
