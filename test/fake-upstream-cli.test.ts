// The fake's standalone process: its environment, and that it serves the API it announces.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { callFake, FAKE_UPSTREAM_DEFAULT_TOKEN, RECOGNITION_PATH } from '../dev/fake-upstream.ts';
import { optionsFromEnv } from '../dev/fake-upstream-cli.ts';

const CLI = fileURLToPath(new URL('../dev/fake-upstream-cli.ts', import.meta.url));

describe('optionsFromEnv', () => {
  it('has defaults for an empty environment (blank values count as unset)', () => {
    expect(optionsFromEnv({ FAKE_LATENCY_MS: '  ', FAKE_TOKENS: ' , ' })).toEqual({
      options: {
        port: 8081,
        host: '127.0.0.1',
        tokens: [FAKE_UPSTREAM_DEFAULT_TOKEN],
        latencyMs: 0,
        asyncReadyAfterMs: 0,
        sharedAccount: false,
      },
      problems: [],
    });
  });

  it('reads every variable', () => {
    const { options, problems } = optionsFromEnv({
      FAKE_PORT: '9000',
      FAKE_HOST: '0.0.0.0',
      FAKE_TOKENS: 'a, b,,c',
      FAKE_LATENCY_MS: '1500',
      FAKE_ASYNC_READY_AFTER_MS: '3000',
      FAKE_TASK_DEADLINE_MS: '5000',
      FAKE_RATE_LIMIT_PER_SECOND: '60',
      FAKE_SHARED_ACCOUNT: 'true',
    });
    expect(problems).toEqual([]);
    expect(options).toEqual({
      port: 9000,
      host: '0.0.0.0',
      tokens: ['a', 'b', 'c'],
      latencyMs: 1500,
      asyncReadyAfterMs: 3000,
      taskDeadlineMs: 5000,
      rateLimitPerSecond: 60,
      sharedAccount: true,
    });
    expect(optionsFromEnv({ FAKE_RATE_LIMIT_PER_SECOND: '0' }).options.rateLimitPerSecond).toBe(
      undefined,
    );
  });

  it('reports every bad variable at once', () => {
    const { problems } = optionsFromEnv({
      FAKE_PORT: '70000',
      FAKE_LATENCY_MS: '-1',
      FAKE_ASYNC_READY_AFTER_MS: '1.5',
      FAKE_TASK_DEADLINE_MS: '0',
      FAKE_RATE_LIMIT_PER_SECOND: 'fast',
      FAKE_SHARED_ACCOUNT: 'yes',
    });
    expect(problems).toEqual([
      'FAKE_PORT must be an integer between 0 and 65535, got "70000"',
      'FAKE_LATENCY_MS must be an integer between 0 and 3600000, got "-1"',
      'FAKE_ASYNC_READY_AFTER_MS must be an integer between 0 and 3600000, got "1.5"',
      'FAKE_TASK_DEADLINE_MS must be an integer between 1 and 3600000, got "0"',
      'FAKE_RATE_LIMIT_PER_SECOND must be an integer between 0 and 1000000, got "fast"',
      'FAKE_SHARED_ACCOUNT must be true, false, 1 or 0, got "yes"',
    ]);
  });
});

describe('the process', () => {
  it('announces its URL on FAKE_HOST/FAKE_PORT, serves the API and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [CLI], {
      env: { ...process.env, FAKE_HOST: '127.0.0.1', FAKE_PORT: '0', FAKE_TOKENS: 'cli-token' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = once(child, 'exit');
    try {
      const lines = createInterface({ input: child.stdout });
      const [line] = (await once(lines, 'line')) as [string];
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line)?.[1];
      expect(url).toBeDefined();
      const reply = await callFake(
        String(url),
        RECOGNITION_PATH,
        { queries: ['aGk='] },
        {
          token: 'cli-token',
        },
      );
      expect(reply.status).toBe(200);
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = await exited;
    expect(code).toBe(0);
  });

  it('exits 1 naming the problem for a bad environment', async () => {
    const child = spawn(process.execPath, [CLI], {
      env: { ...process.env, FAKE_PORT: 'x' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const [code] = await once(child, 'exit');
    expect(code).toBe(1);
    expect(stderr).toContain('FAKE_PORT must be an integer between 0 and 65535, got "x"');
  });
});
