# syntax=docker/dockerfile:1
# Build: docker build -t mqdemo .    Run: docker run --rm mqdemo mqdemo --help
# With python3 for models (`pipe --exec 'python3 model.py'`):
#        docker build --target python -t mqdemo:python .
# Stages: build (Rust toolchain) -> runtime (the binary, sample data in /data, user mqdemo)
# -> python (runtime + Debian's python3) and default (runtime as it is; the last stage,
# so what a plain `docker build` makes). Docs: docs/docker.md.

# Rust 1.x, at least Cargo.toml's rust-version (edition 2024); the runtime below is the
# same Debian release, for the glibc and libssl3 the binary links to.
# `--build-arg RUST_VERSION=1.88` builds with that release.
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
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

FROM debian:bookworm-slim AS runtime
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

# Debian's python3 (standard library only, no pip) for models run by pipe and serve.
FROM runtime AS python
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
USER mqdemo
# Python buffers stdout into a pipe; a model must answer line by line.
ENV PYTHONUNBUFFERED=1

# The default target: the runtime, without Python.
FROM runtime AS default
