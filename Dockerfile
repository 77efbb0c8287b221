# syntax=docker/dockerfile:1
# The bank server example (examples/server.rs): the HTTP API over a runtime on PostgreSQL
# (BANK_POSTGRES_URL) or, without it, on an SQLite file in /data (one replica only).
#
#   docker build -t entities-server .
#   docker run --rm -p 8080:8080 -e BANK_POSTGRES_URL=postgres://app:secret@db:5432/app entities-server
#
# It stops gracefully on SIGTERM (docker stop, Kubernetes): no new requests, the requests under
# way finish, then the runtime hands its partitions to the other replicas. Probes: GET /ready
# (readiness), GET /health (liveness); neither needs ENTITIES_TOKEN.

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo reads every member's manifest. .dockerignore keeps target/ out.
COPY . .
# SQLite is compiled from source (rusqlite's `bundled`) with the image's C compiler; nothing
# else is native. The caches only speed up rebuilds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --example server --features postgres \
    && cp target/release/examples/server /usr/local/bin/entities-server

FROM debian:bookworm-slim
# CA certificates for a database reached over TLS; a user without a login or privileges.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 entities \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home \
        --shell /usr/sbin/nologin entities
COPY --from=build /usr/local/bin/entities-server /usr/local/bin/entities-server
USER 10001:10001
WORKDIR /data
ENV BANK_ADDR=0.0.0.0:8080 \
    BANK_DB=/data/bank.db \
    RUST_BACKTRACE=1
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/entities-server"]
