# syntax=docker/dockerfile:1
# kaproxy image: built with dev dependencies, shipped as the production tree of `npm pack` on Node 24 LTS.
#   docker build -t kaproxy .
#   docker run --rm -p 7000:7000 -p 9901:9901 -v "$PWD/kaproxy.yaml:/etc/kaproxy/kaproxy.yaml:ro" kaproxy
# test/production-tree.test.ts builds the same production tree outside Docker; keep the two in step.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
COPY conf ./conf
# The package as it would be published (package.json "files": dist, conf), plus the lockfile for npm ci.
RUN npm run build \
 && npm pack --ignore-scripts --pack-destination /tmp \
 && mkdir /out \
 && tar -xzf /tmp/kaproxy-*.tgz -C /out --strip-components=1 \
 && cp package-lock.json /out/

FROM ${NODE_IMAGE}
# tini as PID 1 forwards SIGTERM/SIGINT/SIGHUP to kaproxy and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    KAPROXY_CONFIG=/etc/kaproxy/kaproxy.yaml
WORKDIR /opt/kaproxy
COPY --from=build /out/ ./
# Install scripts stay off: koffi ships its prebuilt binaries and loads without one.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force
COPY conf/container.yaml /etc/kaproxy/kaproxy.yaml
# Code and config belong to root and are read-only to the process.
USER node
# The admin API (/healthz, /readyz, /metrics, POST /reload); route ports are the config's to choose.
EXPOSE 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM drains: listeners close, connections get drainTimeout (30 s by default), then exit 0.
# Give `docker stop -t` / terminationGracePeriodSeconds more than the longest drainTimeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "node", "--max-semi-space-size=1", "/opt/kaproxy/dist/cli.js"]
CMD []
