# rdev-api: a static-ish release build on Debian, run as a non-root user with a read-only root.
FROM rust:1.86-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p app --locked \
 && strip target/release/rdev-api

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /var/lib/rdev --create-home rdev
COPY --from=build /src/target/release/rdev-api /usr/local/bin/rdev-api
USER 10001:10001
WORKDIR /var/lib/rdev
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json WORKSPACES_DIR=/var/lib/rdev/workspaces
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "rdev-api"]
CMD ["serve"]
