# Multi-stage build: a static-enough binary on a distroless base, running as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/authrelay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/authrelay /usr/local/bin/authrelay
COPY config/authrelay.example.toml /etc/authrelay/authrelay.toml
ENV AUTHRELAY_CONFIG=/etc/authrelay/authrelay.toml
USER nonroot
EXPOSE 2525
ENTRYPOINT ["/usr/local/bin/authrelay"]
CMD ["run"]
