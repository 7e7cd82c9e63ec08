import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { OpenAPIV3 } from 'openapi-types';
import type { GatewayMetrics } from '../metrics.ts';

export interface OpsRoutesOptions {
  /** Serve `/metrics` from this registry; omitted when METRICS_ENABLED=false. */
  metrics?: GatewayMetrics;
  /** Serve `/docs` and `/openapi.json` (the main app's finished document); omitted when DOCS_ENABLED=false. */
  docs?: { document: OpenAPIV3.Document };
}

/** `/metrics`, `/docs` and `/openapi.json`, on the admin server. */
const opsRoutes: FastifyPluginAsync<OpsRoutesOptions> = async (app, { metrics, docs }) => {
  if (metrics) {
    app.get('/metrics', { config: { quietLog: true } }, async (_request, reply) =>
      reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
    );
  }
  if (docs) {
    await app.register(swagger, { mode: 'static', specification: { document: docs.document } });
    await app.register(swaggerUi, { routePrefix: '/docs' });
    // This OpenAPI 3.0.3 document.
    app.get('/openapi.json', async () => app.swagger());
  }
};

export default fp(opsRoutes, { name: 'ops-routes', fastify: '5.x', encapsulate: true });
