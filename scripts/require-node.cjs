'use strict';
// The Node version guard. Every npm script runs it first (its `pre<name>` script; test/
// node-guard.test.ts keeps that true), so an old Node stops with one line instead of a stack trace
// from the first `.ts` file. Installs are stopped by npm itself: `engine-strict=true` in .npmrc.
//
// CommonJS without newer syntax (no `?.`, `??`, `node:` specifiers) on purpose: it has to run,
// and say something useful, on any Node still found on machines (12 and later).
// The minimum comes from package.json's "engines" (what engine-strict enforces), never a copy.
//
// Why not `node-options=--require=...` in .npmrc: it replaces the caller's NODE_OPTIONS for every
// script, a relative path breaks in child processes started in another directory, and keeping the
// caller's NODE_OPTIONS with `${NODE_OPTIONS?}` needs npm >= 11.5 (older npm passes the text on
// literally and then every script dies).

// biome-ignore lint/style/useNodejsImportProtocol: `node:` specifiers need Node >= 14.18.
const path = require('path');

/** `>=22.19` or `>=22.19.0` → [22, 19, 0]; anything else is a mistake in package.json. */
function parseMinimum(range) {
  const match = /^>=\s*(\d+)\.(\d+)(?:\.(\d+))?$/.exec(String(range).trim());
  if (!match) throw new Error(`engines.node must read ">=MAJOR.MINOR[.PATCH]", got ${range}`);
  return [Number(match[1]), Number(match[2]), Number(match[3] || 0)];
}

/** The one line to print when `version` (`20.20.2` or `v20.20.2`) is older than `range`, else null. */
function nodeVersionProblem(version, range) {
  const need = parseMinimum(range);
  const have = String(version).replace(/^v/, '').split('.').map(Number);
  for (let i = 0; i < 3; i += 1) {
    const part = have[i] || 0;
    if (part > need[i]) return null;
    if (part < need[i]) {
      const shown = need.slice(0, String(range).split('.').length).join('.');
      return `acedata-gateway needs Node.js ${shown} or newer (package.json "engines"); this is v${have.join('.')}. Install Node 24 LTS.`;
    }
  }
  return null;
}

function requiredRange() {
  return require(path.join(__dirname, '..', 'package.json')).engines.node;
}

module.exports = { parseMinimum, nodeVersionProblem };

if (require.main === module) {
  const problem = nodeVersionProblem(process.versions.node, requiredRange());
  if (problem) {
    process.stderr.write(`${problem}\n`);
    process.exit(1);
  }
}
