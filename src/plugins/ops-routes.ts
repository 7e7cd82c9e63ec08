import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import type { OpenAPIV3 } from 'openapi-types';
import type { GatewayMetrics } from '../metrics.ts';

export interface OpsRoutesOptions {
  /** Serve `/metrics` from this registry; omitted when METRICS_ENABLED=false. */
  metrics?: GatewayMetrics;
  /** Serve `/docs` and `/openapi.json`; omitted when DOCS_ENABLED=false. */
  docs?: {
    /**
     * On the main app @fastify/swagger builds the document from the routes. The admin app
     * (ADMIN_PORT) has no routes of its own to describe: it serves the main app's finished document.
     */
    staticDocument?: OpenAPIV3.Document;
  };
}

/** `/metrics`, `/docs` and `/openapi.json`: on the main port, or on ADMIN_PORT to keep them private. */
const opsRoutes: FastifyPluginAsync<OpsRoutesOptions> = async (app, options) => {
  const { metrics, docs } = options;
  if (metrics) {
    app.get(
      '/metrics',
      {
        config: { servedWhileDraining: true },
        schema: { tags: ['operations'], summary: 'Prometheus metrics (text exposition format)' },
      },
      async (_request, reply) =>
        reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
    );
  }
  if (docs) {
    if (docs.staticDocument) {
      await app.register(swagger, {
        mode: 'static',
        specification: { document: docs.staticDocument },
      });
    }
    await app.register(swaggerUi, { routePrefix: '/docs' });
    app.get(
      '/openapi.json',
      { schema: { tags: ['operations'], summary: 'This OpenAPI 3.1 document' } },
      async () => app.swagger(),
    );
  }
};

export default fp(opsRoutes, { name: 'ops-routes', fastify: '5.x', encapsulate: true });
