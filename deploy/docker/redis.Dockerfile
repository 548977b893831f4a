# syntax=docker/dockerfile:1.7
# Redis from Debian's package, for machines where no registry serves the official image
# (deploy/compose.local.yml; deploy/docker-compose.yml uses redis:7-alpine). Data in /data.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD redis-cli ping | grep -q PONG || exit 1
# Without a configuration file Redis refuses other hosts (protected mode): the compose network's
# containers are its only clients, and nothing publishes its port.
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
