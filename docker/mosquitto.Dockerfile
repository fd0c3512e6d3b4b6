# The fleet demo's broker: Debian's Mosquitto with a password file and an ACL
# (docker/fleet/). Build from the repository root:
#   docker build -f docker/mosquitto.Dockerfile -t ansible-worker-mosquitto .
# The logins' passwords come from the environment at start
# (MQTT_WORKER_PASSWORD, MQTT_CONTROLLER_PASSWORD); see docker/fleet.yml.
FROM debian:bookworm-slim

# The broker's user with fixed ids (10002), made before the package would
# make one with whatever ids are free, so that USER can be numeric.
# DL3008 (unpinned apt versions): Debian bookworm's security-updated package.
# hadolint ignore=DL3008
RUN groupadd --system --gid 10002 mosquitto \
    && useradd --system --uid 10002 --gid mosquitto --no-create-home \
        --home-dir /var/lib/mosquitto --shell /usr/sbin/nologin mosquitto \
    && apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o mosquitto -g mosquitto -m 0700 /var/lib/mosquitto /run/mosquitto-auth

COPY docker/fleet/mosquitto.conf /etc/mosquitto/mosquitto.conf
COPY docker/fleet/acl /etc/mosquitto/acl
COPY docker/fleet/mosquitto-start /usr/local/bin/mosquitto-start

# Numeric, so that the runtime need not resolve the name (10002 = mosquitto).
# Persistence (sessions, retained statuses) lives in /var/lib/mosquitto, a
# volume in fleet.yml.
USER 10002:10002
EXPOSE 1883
ENTRYPOINT ["/usr/local/bin/mosquitto-start"]
