import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';

/** cgroup v2, then v1: a container's memory limit, which os.totalmem() does not see. */
const CGROUP_LIMIT_FILES = [
  '/sys/fs/cgroup/memory.max',
  '/sys/fs/cgroup/memory/memory.limit_in_bytes',
];

/** The memory this process may use: the container's limit when there is one, else the machine's. */
export function machineMemoryBytes(): number {
  let bytes = totalmem();
  for (const file of CGROUP_LIMIT_FILES) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch {
      continue;
    }
    const limit = Number(text);
    // "max" (v2) or a huge number (v1) means no limit.
    if (Number.isSafeInteger(limit) && limit > 0) bytes = Math.min(bytes, limit);
  }
  return bytes;
}
