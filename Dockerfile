# Build stage: the release binary, with the embedded default configuration.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin sloxide

# Runtime stage: a slim image running as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sloxide \
 && mkdir -p /etc/sloxide /var/lib/sloxide \
 && chown sloxide /var/lib/sloxide
COPY --from=build /src/target/release/sloxide /usr/local/bin/sloxide
COPY config/default.yaml /etc/sloxide/sloxide.yaml
USER 10001
# OTLP/gRPC, OTLP/HTTP, Prometheus /metrics.
EXPOSE 4317 4318 9464
ENV SLOXIDE_CONFIG=/etc/sloxide/sloxide.yaml
# Checkpoints: mount a volume here so SLO windows survive a new container.
ENV SLOXIDE_DATA_DIR=/var/lib/sloxide
VOLUME ["/var/lib/sloxide"]
ENTRYPOINT ["/usr/local/bin/sloxide"]
CMD ["run"]
