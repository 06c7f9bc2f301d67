#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests.
#
#   scripts/test-postgres.sh start DIR PORT   installs Debian's postgresql if missing,
#                                             starts a fresh cluster in DIR, prints its DSN
#   scripts/test-postgres.sh restart DIR      fast shutdown (sessions terminated), start again
#   scripts/test-postgres.sh pause DIR        fast shutdown, keeping the cluster
#   scripts/test-postgres.sh resume DIR       start a paused cluster again
#   scripts/test-postgres.sh stop DIR
#
# Trust authentication on 127.0.0.1 only, durability off (it is thrown away).
set -euo pipefail

cmd=${1:?usage: $0 start|restart|pause|resume|stop DIR [PORT]}
dir=${2:?usage: $0 start|restart|pause|resume|stop DIR [PORT]}
port=${3:-55432}

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

# PostgreSQL refuses to run as root: as root, run the server as the postgres user.
as_server_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {
  local bin; bin=$(bindir)
  if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
    as_server_user "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

case $cmd in
start)
  if [ -z "$(bindir)" ]; then
    echo "installing PostgreSQL from Debian's packages..." >&2
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo -n"
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  bin=$(bindir)
  [ -n "$bin" ] || { echo "PostgreSQL server binaries not found" >&2; exit 1; }
  stop
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_server_user "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  echo "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" > "$dir/options"
  as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/options")" start >/dev/null
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt -c "CREATE DATABASE pyo3_twisted_test" >/dev/null
  echo "postgresql://postgres@127.0.0.1:$port/pyo3_twisted_test"
  ;;
restart)
  # Same options as at start; output to the log, not to our caller's pipes.
  as_server_user "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 \
    -o "$(cat "$dir/options")" restart >/dev/null
  ;;
pause)
  as_server_user "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  ;;
resume)
  as_server_user "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/options")" start >/dev/null
  ;;
stop)
  stop
  ;;
*)
  echo "usage: $0 start|restart|pause|resume|stop DIR [PORT]" >&2
  exit 2
  ;;
esac
