// @fastify/http-proxy passing every request through to UPSTREAM_URL (the fake upstream).
// Fastify and plugin defaults (no logger); the body is streamed, never parsed.
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { announce, urlOf } from './announce.ts';

const upstream = process.env.UPSTREAM_URL;
if (!upstream) throw new Error('UPSTREAM_URL is required');

const app = Fastify({ bodyLimit: 4 * 1024 * 1024 });
await app.register(proxy, { upstream });
await app.listen({ host: '127.0.0.1', port: 0 });
announce(urlOf(app.server.address()), () => app.close());
