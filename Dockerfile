# usersvc container image.
#
#   docker build -t usersvc .
#   docker run --rm -e DATABASE_URL=postgres://... -p 8080:8080 -p 50051:50051 usersvc
#
# Configuration is by environment only (DATABASE_URL, USERSVC_*); see
# src/config.rs. No protoc is needed: build.rs compiles proto/ with protox.

ARG RUST_VERSION=1

# ---------------------------------------------------------------- builder ---
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# 1. Dependencies only. Build the real manifest, lockfile, build script and
#    protos against stub sources, so this layer is reused until Cargo.toml,
#    Cargo.lock, build.rs or proto/ change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The crate itself. sqlx::migrate! embeds migrations/ and include_str!
#    the mail templates at compile time.
#    COPY keeps the context's mtimes, which may be older than the stub build,
#    so touch the crate roots to make cargo rebuild them.
COPY migrations ./migrations
COPY templates ./templates
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/usersvc /usr/local/bin/usersvc

# ---------------------------------------------------------------- runtime ---
# libssl3: webauthn-rs (passkeys) links OpenSSL.
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 usersvc \
    && useradd --system --uid 10001 --gid usersvc --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin usersvc \
    && mkdir -p /var/lib/usersvc && chown usersvc:usersvc /var/lib/usersvc

COPY --from=builder /usr/local/bin/usersvc /usr/local/bin/usersvc
# Without DATABASE_URL the embedded SQLite store (and its master.key) live
# here; mount a volume to keep them.
WORKDIR /var/lib/usersvc
VOLUME /var/lib/usersvc

# The defaults in the binary bind to 127.0.0.1, unreachable from outside a
# container: listen on all interfaces here. The management port (9000:
# /metrics, /healthz, /readyz) is for the orchestrator's probes and the
# metrics scraper; publish it to them only.
ENV USERSVC_GRPC_ADDR=0.0.0.0:50051 \
    USERSVC_HTTP_ADDR=0.0.0.0:8080 \
    USERSVC_ADMIN_ADDR=0.0.0.0:9000 \
    RUST_LOG=info

USER 10001:10001
EXPOSE 50051 8080 9000

ENTRYPOINT ["usersvc"]
CMD ["serve"]
