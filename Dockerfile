# acedata-gateway image: compiled JavaScript (dist/), production dependencies, the entrypoint.
#
#   docker build -t acedata-gateway .
#   docker run --rm -p 8080:8080 --env-file .env -v "$PWD/data:/data" acedata-gateway
#
# Compiled, not the TypeScript sources: Node's type stripping keeps its TypeScript parser in
# memory, about 33 MB more resident at idle (docs/operations.md, "Image"). The runtime stage holds
# no compiler, no dev dependencies and no npm cache.
# docker-compose.yml is the supported way to run it (docs/operations.md). test/deploy.test.ts runs
# this file's ENTRYPOINT, CMD and HEALTHCHECK as plain processes (no Docker engine needed).

# 1. Compile src/ to dist/ (tsc, a dev dependency). Type errors fail the build.
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# --ignore-scripts skips the prebuild Node check (this is Node 24) and runs "build" itself.
RUN npm run build --ignore-scripts

# 2. Production dependencies only, from the lock file.
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# 3. Runtime. Files stay root-owned and read-only to the user that runs the process.
FROM node:24-slim AS runtime
# GATEWAY_DATA_DIR: the directory the entrypoint gives to the node user when started as root.
# NODE_OPTIONS: V8's young generation capped at 2 MB per semi-space. By default it grows to tens of
# MB under a burst of requests and keeps those pages: `npm run bench` measured 2,000 requests in
# flight peaking at about 400 MB, about 285 MB with the cap; cache hits of large bodies got faster,
# misses about a quarter slower in CPU, still far above the upstream's rate (bench/analysis.md).
# The bench runs every gateway with these flags; override to change them.
ENV NODE_ENV=production \
    NODE_OPTIONS="--max-semi-space-size=2" \
    GATEWAY_DATA_DIR=/data \
    GATEWAY_CLIENTS_FILE=/data/clients.json
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY --from=build /app/dist ./dist
COPY docker/entrypoint.sh /usr/local/bin/gateway-entrypoint
# The clients file lives in /data (mount a host directory or a volume there). Owned by node, so an
# image run without a mount still works until the container is removed.
RUN mkdir -p /data && chown node:node /data && chmod 0755 /usr/local/bin/gateway-entrypoint
# Non-root by default (docker run, Kubernetes). docker-compose.yml starts it as root instead, so the
# entrypoint can give /data to node first; it then drops to node (docker/entrypoint.sh).
USER node
# 8080 is the API. 9091 (ADMIN_PORT) serves /metrics, /docs, /openapi.json and /usage: keep it off
# public networks (ADMIN_HOST is 127.0.0.1 unless set; compose sets 0.0.0.0 on its own network).
EXPOSE 8080 9091
# SIGTERM starts a graceful drain of up to SHUTDOWN_TIMEOUT_MS (default 140 s): give the container
# longer than that before it is killed (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only (/healthz answers while the process serves). The slim image has no curl: Node's fetch.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/local/bin/gateway-entrypoint"]
CMD ["server"]
