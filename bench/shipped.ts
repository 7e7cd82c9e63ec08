// The Node flags the image runs the gateway with: the Dockerfile's NODE_OPTIONS. The bench starts
// every gateway process with them, so that it measures the gateway as shipped.
import { readFileSync } from 'node:fs';

export function shippedNodeFlags(): string[] {
  const dockerfile = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8');
  const options = /NODE_OPTIONS="([^"]*)"/.exec(dockerfile)?.[1] ?? '';
  return options.split(/\s+/).filter(Boolean);
}
