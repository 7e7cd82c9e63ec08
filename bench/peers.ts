// Starting the servers of a run: the fake upstream, the gateway, and its peers (bare Fastify,
// @fastify/http-proxy, nginx). Each runs in its own process and listens on 127.0.0.1.
import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FAKE_UPSTREAM_DEFAULT_TOKEN } from '../dev/fake-upstream.ts';
import { freePort } from './net.ts';
import { type Child, startNodeServer } from './processes.ts';
import { shippedNodeFlags } from './shipped.ts';

export interface Server {
  name: string;
  url: string;
  child: Child;
}

export const UPSTREAM_TOKEN = FAKE_UPSTREAM_DEFAULT_TOKEN;

export interface BenchClient {
  id: string;
  key: string;
}

/** A gateway client of the benchmark; its key is derived from its id. */
export const benchClient = (id: string): BenchClient => ({
  id,
  key: `agw_bench_${id}_key_0123456789abcdefghijklmnopqrstuvwx`,
});

/** The one client of most scenarios. */
export const CLIENT = benchClient('bench');
export const CLIENT_KEY = CLIENT.key;

/**
 * What every gateway of the benchmark gets: the defaults of every setting (the gate's rate and
 * capacity derived from them, the byte budget from the machine's memory), except where a scenario
 * says otherwise (`env`, reported with it). Each client's clients-file rate limit is raised so
 * that it never binds. Loopback, port 0, for both the API and the admin (/metrics) server.
 */
export const GATEWAY_ENV = {
  LOG_LEVEL: 'info',
} as const;

export async function startFake(latencyMs: number): Promise<Server> {
  const { child, url } = await startNodeServer('fake upstream', 'fake-upstream.ts', {
    env: { FAKE_LATENCY_MS: String(latencyMs) },
  });
  return { name: 'fake upstream', url, child };
}

export interface GatewayOptions {
  upstreamUrl: string;
  /** Directory for the gateway's stdout (its log lines). */
  dir: string;
  /** Settings that differ from the defaults for this scenario. */
  env?: Record<string, string>;
  /** Default: [CLIENT]. */
  clients?: BenchClient[];
  /** Directory to write a V8 CPU profile into when the child exits. */
  cpuProfileDir?: string;
  /** Start with --expose-gc, so that the bench can collect garbage before reading memory. */
  exposeGc?: boolean;
}

export interface GatewayServer extends Server {
  /** The admin server: /metrics. */
  adminUrl: string;
  /** The gateway's stdout: its log lines. */
  logFile: string;
}

export async function startGateway(options: GatewayOptions): Promise<GatewayServer> {
  const logFile = join(
    options.dir,
    `gateway-${Date.now()}-${Math.random().toString(36).slice(2)}.log`,
  );
  const fd = openSync(logFile, 'w');
  try {
    const { child, url, adminUrl } = await startNodeServer('gateway', 'gateway.ts', {
      env: {
        ...GATEWAY_ENV,
        ...options.env,
        ACEDATA_API_TOKEN: UPSTREAM_TOKEN,
        ACEDATA_BASE_URL: options.upstreamUrl,
        HOST: '127.0.0.1',
        PORT: '0',
        ADMIN_HOST: '127.0.0.1',
        ADMIN_PORT: '0',
        BENCH_CLIENTS: JSON.stringify(options.clients ?? [CLIENT]),
      },
      execArgv: [
        ...shippedNodeFlags(),
        ...(options.cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfileDir}`] : []),
        ...(options.exposeGc ? ['--expose-gc'] : []),
      ],
      stdout: fd,
    });
    if (!adminUrl) throw new Error('the gateway did not report its admin URL');
    return { name: 'gateway', url, adminUrl, child, logFile };
  } finally {
    closeSync(fd); // the child holds its own copy
  }
}

export async function startFloor(options: { exposeGc?: boolean } = {}): Promise<Server> {
  const { child, url } = await startNodeServer('bare Fastify', 'floor.ts', {
    env: {},
    execArgv: options.exposeGc ? ['--expose-gc'] : [],
  });
  return { name: 'bare Fastify', url, child };
}

export async function startHttpProxy(
  upstreamUrl: string,
  options: { exposeGc?: boolean; connections?: number } = {},
): Promise<Server> {
  const { child, url } = await startNodeServer('@fastify/http-proxy', 'http-proxy.ts', {
    env: {
      UPSTREAM_URL: upstreamUrl,
      ...(options.connections ? { PROXY_CONNECTIONS: String(options.connections) } : {}),
    },
    execArgv: options.exposeGc ? ['--expose-gc'] : [],
  });
  return { name: '@fastify/http-proxy', url, child };
}

export const NGINX_WORKERS = 1;

/** The nginx binary's path, or undefined when nginx is not installed (the bench never installs it). */
export function nginxPath(): string | undefined {
  const which = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' });
  const path = which.stdout.trim();
  return which.status === 0 && path !== '' ? path : undefined;
}

/** nginx `proxy_pass` to the upstream: one worker, no access log, keep-alive to the upstream. */
export async function startNginx(
  binary: string,
  upstreamUrl: string,
  dir: string,
): Promise<Server> {
  const root = join(dir, 'nginx');
  mkdirSync(root, { recursive: true });
  chmodSync(dir, 0o755); // nginx workers drop root privileges and must reach their temp paths
  chmodSync(root, 0o755);
  const port = await freePort();
  const upstream = new URL(upstreamUrl).host;
  const conf = `daemon off;
worker_processes ${NGINX_WORKERS};
pid ${root}/nginx.pid;
error_log ${root}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${root}/client_body;
  proxy_temp_path ${root}/proxy;
  fastcgi_temp_path ${root}/fastcgi;
  uwsgi_temp_path ${root}/uwsgi;
  scgi_temp_path ${root}/scgi;
  client_max_body_size 4m;
  client_body_buffer_size 4m;
  keepalive_requests 1000000;
  upstream fake { server ${upstream}; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
  const confPath = join(root, 'nginx.conf');
  writeFileSync(confPath, conf);
  const { child, url } = await startNodeServer('nginx', 'nginx.ts', {
    env: {
      NGINX_BIN: binary,
      NGINX_PREFIX: root,
      NGINX_CONF: confPath,
      NGINX_PORT: String(port),
    },
  });
  return { name: 'nginx', url, child };
}
