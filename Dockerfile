# snapwarden container image: build stage with the Rust toolchain, runtime stage with only the binary, CA
# certificates, curl (for HEALTHCHECK) and tini. Checked by tests/deploy/check.sh with hadolint; the image
# itself cannot be built on the project's machines (no Docker engine), see the README.
#
#   docker build -t snapwarden:0.1.0 .
#
# The config is not baked in: mount one at /etc/snapwarden/snapwarden.toml, or build a two-line image
# FROM this one that COPYs it there (README, "Run as a container").

# Same Debian release in both stages, so the binary's glibc matches the runtime's.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# --locked: exactly the dependency versions the tests ran with. The same command as the README's install.
RUN cargo build --locked --release --bin snapwarden

FROM debian:bookworm-slim
# Versions are not pinned (hadolint DL3008): Debian replaces a package's version in place on every security
# update and drops the old one from the mirror, so a pin would break the build on the next CA or curl fix;
# the base image tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 snapwarden \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin snapwarden \
    && install -d -m 0755 /etc/snapwarden \
    && install -d -o 10001 -g 10001 -m 0750 /run/snapwarden
# The host locks (`snapwarden once` inside the container meets the daemon's). A volume, so it stays writable
# under a read-only root file system; ECS copies this directory into the bind mount deploy/ecs gives it.
VOLUME ["/run/snapwarden"]
COPY --from=build /src/target/release/snapwarden /usr/local/bin/snapwarden

# Listen on every interface inside the container so the port can be published; JSON lines to stdout for the
# container log driver (it is also the default when stdout is not a terminal, which is always the case here).
ENV SNAPWARDEN_DAEMON__LISTEN=0.0.0.0:9180 \
    SNAPWARDEN_LOG__FORMAT=json \
    SNAPWARDEN_CONFIG=/etc/snapwarden/snapwarden.toml
EXPOSE 9180
# A fixed numeric UID, so volume permissions and Kubernetes/ECS runAsUser checks do not depend on /etc/passwd.
USER 10001:10001

# /healthz answers 503 when the scheduler loop has stalled for 30 s, 200 while it ticks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9180/healthz"]

# tini as PID 1 forwards SIGTERM to the daemon (which drains in-flight runs within daemon.shutdown-grace) and
# reaps anything a health check leaves behind. Give the container a stop timeout above the grace period.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/snapwarden"]
CMD ["run"]
