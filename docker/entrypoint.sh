#!/bin/sh
# The image's ENTRYPOINT (docs/operations.md, "The data directory and its owner").
#
#   (no arguments) | server    the gateway (node dist/server.js)
#   clients <args...>          the clients CLI (node dist/clients/cli.js <args...>)
#   <anything else>            run as given (sh, node -e ..., for troubleshooting)
#
# Who runs it:
#   - started as a non-root user (the image's default USER, Kubernetes, `docker run -u`): runs the
#     command as that user and touches nothing;
#   - started as root with GATEWAY_UID set (GATEWAY_GID defaults to it): switches to that uid/gid
#     and touches nothing (GATEWAY_UID=0 keeps root);
#   - started as root without GATEWAY_UID (what docker-compose.yml does): makes the data directory
#     (GATEWAY_DATA_DIR, /data in the image) and what is in it owned by 1000:1000 (the image's
#     `node` user), then switches to 1000:1000. So a directory that Docker created as root, or files
#     written by another uid, work without anyone running chown by hand.
#
# Needs only CAP_CHOWN, CAP_SETUID and CAP_SETGID (docker-compose.yml drops every other one but
# KILL, which docker-init needs to signal the gateway). The command never keeps any: switching away
# from uid 0 clears every capability.
set -eu

# The image's `node` user and group (node:24-slim).
RUN_UID=1000
RUN_GID=1000
# The image sets GATEWAY_DATA_DIR=/data; unset, no ownership is changed anywhere.
DATA_DIR=${GATEWAY_DATA_DIR:-}

say() { printf 'gateway-entrypoint: %s\n' "$*" >&2; }

case "${1:-server}" in
  server) [ "$#" -gt 0 ] && shift; set -- node dist/server.js "$@" ;;
  clients) shift; set -- node dist/clients/cli.js "$@" ;;
esac

if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

numeric() { case "$2" in '' | *[!0-9]*) say "$1 must be a number, got \"$2\""; exit 64 ;; esac; }

if [ -n "${GATEWAY_UID:-}" ]; then
  numeric GATEWAY_UID "$GATEWAY_UID"
  gid=${GATEWAY_GID:-$GATEWAY_UID}
  numeric GATEWAY_GID "$gid"
  if [ "$GATEWAY_UID" = 0 ]; then
    say "running as root (GATEWAY_UID=0)"
    exec "$@"
  fi
  exec setpriv --reuid="$GATEWAY_UID" --regid="$gid" --clear-groups -- "$@"
fi

# An entry in the data directory that the node user does not own; empty when there is none, or
# when root cannot list the directory (then the node user owns it with 0700, which is right).
foreign() {
  find "$DATA_DIR" -mindepth 1 \( ! -user "$RUN_UID" -o ! -group "$RUN_GID" \) -print 2>/dev/null |
    head -n 1
}

# Root without CAP_DAC_READ_SEARCH can read a directory only as its owner (0700 is common). So:
# root takes each directory before reading it (find's pre-order `-exec ... \;`), then everything
# goes to the node user children first (`-depth`). `chown -h`, and find does not follow links: a
# symbolic link in the directory never changes its target's owner.
take_data_dir() {
  find "$DATA_DIR" -type d -exec chown -h 0:0 {} \; &&
    find "$DATA_DIR" -depth \( ! -user "$RUN_UID" -o ! -group "$RUN_GID" \) \
      -exec chown -h "$RUN_UID:$RUN_GID" {} +
}

if [ -n "$DATA_DIR" ] && [ -d "$DATA_DIR" ] &&
  { [ "$(stat -c %u:%g "$DATA_DIR")" != "$RUN_UID:$RUN_GID" ] || [ -n "$(foreign)" ]; }; then
  if ! take_data_dir; then
    say "cannot make $DATA_DIR owned by $RUN_UID:$RUN_GID; fix its owner on the host, or set GATEWAY_UID/GATEWAY_GID to the owner's"
    exit 1
  fi
  say "made $DATA_DIR and its files owned by $RUN_UID:$RUN_GID (the image's node user)"
fi

exec setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups -- "$@"
