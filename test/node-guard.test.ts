/**
 * The Node version guard (issue 13 item 8): on a Node older than package.json's "engines",
 * `npm install`/`npm ci` stop before touching node_modules (engine-strict in .npmrc) and every npm
 * script stops with one line naming the version needed (scripts/require-node.cjs as its
 * `pre<name>` script), instead of a stack trace from the first `.ts` file.
 *
 * The process tests need an old Node: the system's /usr/bin/node (Node 20 on these machines) with
 * its npm. They are skipped, with the reason in their name, where there is none.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);
const guard = require('../scripts/require-node.cjs') as {
  parseMinimum(range: string): [number, number, number];
  nodeVersionProblem(version: string, range: string): string | null;
};
const pkg = require('../package.json') as {
  engines: { node: string };
  scripts: Record<string, string>;
};
const RANGE = pkg.engines.node;
const GUARD_COMMAND = 'node scripts/require-node.cjs';
const BOUND_MS = 60_000;

const OLD_NODE = '/usr/bin/node';
const OLD_NPM = '/usr/bin/npm';
const oldVersion = (() => {
  const probe = spawnSync(OLD_NODE, ['-p', 'process.versions.node'], { encoding: 'utf8' });
  return probe.status === 0 ? probe.stdout.trim() : undefined;
})();
const oldNpm = oldVersion !== undefined && spawnSync(OLD_NPM, ['-v']).status === 0;
const skipOld =
  oldVersion === undefined
    ? `${OLD_NODE} is missing`
    : guard.nodeVersionProblem(oldVersion, RANGE) === null
      ? `${OLD_NODE} is v${oldVersion}, not older than ${RANGE}`
      : oldNpm
        ? ''
        : `${OLD_NPM} is missing`;
/** npm's cache and logs go to HOME: the temp project, where the npm runs get one. */
const OLD_ENV = { PATH: '/usr/bin:/bin', HOME: tmpdir() };

function run(
  command: string,
  args: string[],
  cwd: string,
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')}: no exit within ${BOUND_MS} ms`));
    }, BOUND_MS);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const nonEmptyLines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');

describe('the version check', () => {
  it('reads the minimum from package.json engines', () => {
    expect(guard.parseMinimum(RANGE)).toEqual([22, 19, 0]);
    expect(guard.parseMinimum('>=22.19.3')).toEqual([22, 19, 3]);
    expect(() => guard.parseMinimum('^22.19')).toThrow(/engines\.node/);
    expect(() => guard.parseMinimum('>=22')).toThrow(/engines\.node/);
  });

  it.each([
    ['20.20.2'],
    ['v20.20.2'],
    ['22.18.9'],
    ['22.9.0'], // numbers, not strings: 9 < 19
    ['18.0.0'],
    ['12.22.12'],
  ])('refuses %s with one line naming the version needed', (version) => {
    const problem = guard.nodeVersionProblem(version, RANGE);
    expect(problem).toMatch(/needs Node\.js 22\.19 or newer/);
    expect(problem).toContain(`this is v${version.replace(/^v/, '')}`);
    expect(problem).not.toContain('\n');
  });

  it.each([['22.19.0'], ['22.19'], ['22.20.1'], ['23.0.0'], ['v24.22.3'], ['100.0.0']])(
    'accepts %s',
    (version) => {
      expect(guard.nodeVersionProblem(version, RANGE)).toBeNull();
    },
  );

  it('honours a patch level when the range names one', () => {
    expect(guard.nodeVersionProblem('22.19.2', '>=22.19.3')).toMatch(/needs Node\.js 22\.19\.3/);
    expect(guard.nodeVersionProblem('22.19.3', '>=22.19.3')).toBeNull();
  });
});

describe('the wiring', () => {
  it('runs the guard before every npm script', () => {
    const scripts = Object.keys(pkg.scripts);
    const main = scripts.filter((name) => !name.startsWith('pre') && !name.startsWith('post'));
    expect(main.length).toBeGreaterThan(0);
    const unguarded = main.filter((name) => pkg.scripts[`pre${name}`] !== GUARD_COMMAND);
    expect(unguarded).toEqual([]);
  });

  it('makes npm refuse installs on an unsupported engine (.npmrc)', async () => {
    const settings = (await readFile(join(ROOT, '.npmrc'), 'utf8'))
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && !/^[#;]/.test(line));
    expect(settings).toContain('engine-strict=true');
  });

  it('passes on this Node, silently', async () => {
    const result = await run(process.execPath, ['scripts/require-node.cjs'], ROOT, {
      PATH: process.env.PATH ?? '',
    });
    expect(result).toEqual({ code: 0, stdout: '', stderr: '' });
  });
});

describe(`on an old Node (${OLD_NODE}${oldVersion ? ` v${oldVersion}` : ''})`, () => {
  let project = '';

  /** A copy of the package's manifest, lock, .npmrc and guard: npm never touches the checkout. */
  beforeAll(async () => {
    if (skipOld) return;
    project = await mkdtemp(join(tmpdir(), 'agw-node-guard-'));
    await mkdir(join(project, 'scripts'));
    for (const file of [
      'package.json',
      'package-lock.json',
      '.npmrc',
      'scripts/require-node.cjs',
    ]) {
      await copyFile(join(ROOT, file), join(project, file));
    }
  });
  afterAll(async () => {
    if (project) await rm(project, { recursive: true, force: true });
  });

  const title = (what: string) => (skipOld ? `${what} (skipped: ${skipOld})` : what);

  it.skipIf(skipOld !== '')(title('the guard exits 1 with exactly one line'), async () => {
    const result = await run(OLD_NODE, ['scripts/require-node.cjs'], ROOT, OLD_ENV);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(nonEmptyLines(result.stderr)).toEqual([
      `acedata-gateway needs Node.js 22.19 or newer (package.json "engines"); this is v${oldVersion}. Install Node 24 LTS.`,
    ]);
  });

  it.skipIf(skipOld !== '')(
    title('`npm run demo` stops at the guard with that line, no stack trace'),
    async () => {
      const result = await run(OLD_NPM, ['run', 'demo'], project, { ...OLD_ENV, HOME: project });
      expect(result.code).toBe(1);
      expect(nonEmptyLines(result.stderr)).toEqual([
        expect.stringMatching(/^acedata-gateway needs Node\.js 22\.19 or newer/),
      ]);
      expect(result.stdout + result.stderr).not.toMatch(/ERR_UNKNOWN_FILE_EXTENSION|\n\s+at /);
      // The demo itself never started.
      expect(result.stdout).not.toContain('> node dev/demo.ts');
    },
    BOUND_MS,
  );

  it.skipIf(skipOld !== '')(
    title('`npm ci` refuses before installing anything, naming the version needed'),
    async () => {
      const result = await run(OLD_NPM, ['ci', '--no-audit', '--no-fund'], project, {
        ...OLD_ENV,
        HOME: project,
      });
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain('EBADENGINE');
      expect(result.stderr).toContain(`Required: {"node":"${RANGE}"}`);
      expect(existsSync(join(project, 'node_modules'))).toBe(false);
    },
    BOUND_MS,
  );
});
