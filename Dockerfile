# rdev-api: a static-ish release build on Debian, run as a non-root user with a read-only root.
FROM rust:1.86-bookworm AS build
WORKDIR /src
COPY . .
# rdev-sandbox next to rdev-api: the server starts each command's sandbox with it (under
# EXECUTOR=process), which is faster than re-executing the server's own binary.
RUN cargo build --release --locked -p app --bin rdev-api -p adapters-process --bin rdev-sandbox \
 && strip target/release/rdev-api target/release/rdev-sandbox

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /var/lib/rdev --create-home rdev
COPY --from=build /src/target/release/rdev-api /src/target/release/rdev-sandbox /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/rdev
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json WORKSPACES_DIR=/var/lib/rdev/workspaces
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "rdev-api"]
CMD ["serve"]
