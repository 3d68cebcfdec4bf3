# syntax=docker/dockerfile:1
# Build: docker build -t mqdemo .    Run: docker run --rm mqdemo mqdemo --help

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. Every target Cargo.toml names
# needs a file to exist (stubs here; .ci/check_docker.py keeps this list complete).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs && echo 'fn main() {}' > benches/codec.rs \
    && cargo build --release --locked --bin mqdemo \
    && rm -rf src
COPY src ./src
COPY examples/data ./examples/data
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin mqdemo \
    && strip target/release/mqdemo

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /work mqdemo \
    && mkdir -p /work /out \
    && chown mqdemo /work /out
COPY --from=build /src/target/release/mqdemo /usr/local/bin/mqdemo
COPY examples/data /data
USER mqdemo
WORKDIR /work
ENV AMQP_URL=amqp://guest:guest@rabbitmq:5672/%2f
CMD ["mqdemo", "demo"]
