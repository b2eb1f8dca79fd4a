# syntax=docker/dockerfile:1
# The pullsecret-injector image: the release binary on distroless, as a non-root user.
# `make docker-build` builds it; the chart's values.yaml names the published image.
# `make image` assembles the same image without Docker (image/build.sh): it reads the final
# stage's LABEL, USER, EXPOSE, ENTRYPOINT and CMD from here and refuses anything else there.

# Builder: the same command as `make build`, so the binary the tests exercise is the one
# shipped. Pinned by tag; pin by digest too where your registry policy asks for it.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and incremental outputs between builds; the binary is
# copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/pullsecret-injector /out/pullsecret-injector

# Runtime: glibc and CA certificates only (Debian 12, like the builder); no shell, no package
# manager. 65532 is distroless' "nonroot", and the chart's runAsUser.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="pullsecret-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects the image pull secrets a pod's images need" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pullsecret-injector/pullsecret-injector"
COPY --from=build /out/pullsecret-injector /pullsecret-injector
USER 65532:65532
# The webhook (TLS) and the plain-HTTP metrics and health port.
EXPOSE 8443 8080
ENTRYPOINT ["/pullsecret-injector"]
CMD ["serve", "--config", "/etc/pullsecret-injector/config.yaml"]
