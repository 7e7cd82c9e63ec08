// @fastify/http-proxy passing every request through to UPSTREAM_URL (the fake upstream).
// Fastify and plugin defaults (no logger); the body is streamed, never parsed. PROXY_CONNECTIONS
// raises the upstream pool's connections (default 128), so that the memory baseline holds as many
// requests at the upstream as the gateway does instead of queueing them unread.
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { announce, urlOf } from './announce.ts';

const upstream = process.env.UPSTREAM_URL;
if (!upstream) throw new Error('UPSTREAM_URL is required');
const connections = Number(process.env.PROXY_CONNECTIONS ?? 0);

const app = Fastify({ bodyLimit: 4 * 1024 * 1024 });
await app.register(proxy, { upstream, ...(connections > 0 ? { undici: { connections } } : {}) });
await app.listen({ host: '127.0.0.1', port: 0 });
announce(urlOf(app.server.address()), () => app.close());
