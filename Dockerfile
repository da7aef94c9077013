# authrelay container image: built in a full Rust image, run on distroless as a non-root user.
#   docker build -t authrelay .      (or: podman build -t authrelay .)
# Configuration: config/container.toml (baked in) + AUTHRELAY__SECTION__NAME__KEY environment
# variables + secret files; see docker-compose.yml.

# Both images carry OpenSSL for the legacy-tls feature (TLS 1.0/1.1 device listeners): the
# build image libssl-dev, distroless/cc libssl3.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them. The image holds the
# library and the binary only: the manifest's other targets ([[bench]] and any [[test]] or
# [[example]] table added later) are cut from the copy built here, because their files are not
# copied (Cargo refuses a manifest whose targets it cannot find). Cutting them changes no
# dependency, so Cargo.lock holds as it is (--locked). Stand-in sources build the dependencies;
# the real ones follow.
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[/ { cut = 1; next } /^\[/ { cut = 0 } !cut' Cargo.toml > Cargo.image.toml \
    && mv Cargo.image.toml Cargo.toml \
    && mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/authrelay \
    && mkdir -p /out/var/lib/authrelay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/authrelay /usr/local/bin/authrelay
COPY config/container.toml /etc/authrelay/authrelay.toml
# The token store's volume, owned by the nonroot user (65532).
COPY --from=build --chown=65532:65532 /out/var/lib/authrelay /var/lib/authrelay
ENV AUTHRELAY_CONFIG=/etc/authrelay/authrelay.toml
USER 65532:65532
WORKDIR /var/lib/authrelay
VOLUME ["/var/lib/authrelay"]
EXPOSE 2525 9090
# distroless has no shell or curl: the binary checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/authrelay", "health"]
ENTRYPOINT ["/usr/local/bin/authrelay"]
CMD ["run"]
