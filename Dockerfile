# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked || true
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin finworker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app finworker
WORKDIR /app
COPY --from=build /src/target/release/finworker /usr/local/bin/finworker
COPY migrations ./migrations
COPY config ./config
USER finworker
EXPOSE 8080
ENV FINWORKER__HTTP__BIND=0.0.0.0:8080 \
    FINWORKER__LOG__FORMAT=json
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# Exec form: finworker is PID 1 and receives SIGTERM itself (sidekiq#6711).
ENTRYPOINT ["/usr/local/bin/finworker"]
CMD ["run"]
