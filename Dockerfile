# syntax=docker/dockerfile:1
# acedata-gateway image. Node 24 runs the TypeScript sources directly (type stripping), so there
# is no build step: the image holds package.json, the production dependencies and src/, nothing else.
#
#   docker build -t acedata-gateway .
#   docker run --rm -p 8080:8080 --env-file .env \
#     -e GATEWAY_CLIENTS_FILE=/config/clients.json -v "$PWD/clients.json:/config/clients.json:ro" \
#     acedata-gateway
#
# test/deploy.test.ts checks this file against the repository (no Docker engine needed).

# 1. Production dependencies only, from the lock file.
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# 2. Runtime: no npm cache, no dev tools, no package-lock. Files stay root-owned and read-only to
#    the `node` user (uid 1000) that runs the process.
FROM node:24-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
USER node
EXPOSE 8080
# SIGTERM starts a graceful drain of up to SHUTDOWN_TIMEOUT_MS (default 140 s): give the container
# longer than that before it is killed (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only (/healthz answers while the process serves). The slim image has no curl: Node's fetch.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "src/server.ts"]
