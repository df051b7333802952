# syntax=docker/dockerfile:1.7
# Images for keybrake-operator and keybrake-proxy:
#   docker build --target operator -t ghcr.io/keybrake/keybrake-operator:0.1.0 .
#   docker build --target proxy    -t ghcr.io/keybrake/keybrake-proxy:0.1.0 .
# Build stage on the project's Rust version; runtime on distroless (glibc, CA roots, no shell,
# no package manager) as the nonroot user. The binaries write nothing to disk, so the pods run
# with a read-only root filesystem (manifests/deploy).

FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p keybrake-operator -p keybrake-proxy \
 && mkdir -p /out \
 && cp target/release/keybrake-operator target/release/keybrake-proxy /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/keybrake-operator /usr/local/bin/keybrake-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keybrake-operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /out/keybrake-proxy /usr/local/bin/keybrake-proxy
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/keybrake-proxy"]
