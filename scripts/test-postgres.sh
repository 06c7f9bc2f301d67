#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests.
#
#   scripts/test-postgres.sh start DIR PORT   installs Debian's postgresql if missing,
#                                             starts a fresh cluster in DIR, prints its DSN
#   scripts/test-postgres.sh restart DIR      fast shutdown (sessions terminated), start again
#   scripts/test-postgres.sh pause DIR        fast shutdown, keeping the cluster
#   scripts/test-postgres.sh resume DIR       start a paused cluster again
#   scripts/test-postgres.sh stop DIR
#   scripts/test-postgres.sh start-tls DIR PORT   a second cluster with ssl=on: a CA, a
#                                             server certificate and client certificates
#                                             made now with openssl (DIR/certs), and
#                                             pg_hba rules per user (see below)
#   scripts/test-postgres.sh start-pgbouncer DIR PORT UPSTREAM_PORT
#                                             installs Debian's pgbouncer if missing and
#                                             runs it in transaction mode in front of the
#                                             first cluster, on PORT
#   scripts/test-postgres.sh stop-pgbouncer DIR
#
# Trust authentication on 127.0.0.1 only (the TLS cluster: per user), durability off
# (it is thrown away).
set -euo pipefail

cmd=${1:?usage: $0 start|restart|pause|resume|stop DIR [PORT]}
dir=${2:?usage: $0 start|restart|pause|resume|stop DIR [PORT]}
port=${3:-55432}

install_debian() {
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo -n"
  echo "installing $* from Debian's packages..." >&2
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

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
    install_debian postgresql
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
start-tls)
  # The users and what the server asks of each (pg_hba.conf, first match wins):
  #   tls_user   hostssl only, password (scram)  -- TLS required
  #   cert_user  hostssl only, client certificate (CN=cert_user)
  #   pw_user    host (TLS or not), password     -- .pgpass and missing passwords
  #   postgres   host, trust                     -- the tests' own checks
  bin=$(bindir)
  [ -n "$bin" ] || { echo "start the first cluster first (it installs PostgreSQL)" >&2; exit 1; }
  command -v openssl >/dev/null || install_debian openssl
  stop
  rm -rf "$dir"
  mkdir -p "$dir/certs"
  certs="$dir/certs"
  (
    cd "$certs"
    quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@"; exit 1; }; }
    # The CA, and a second one nothing is signed by (a wrong root).
    quiet openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 2 -subj "/CN=pyo3-twisted test CA"
    quiet openssl req -x509 -new -nodes -newkey rsa:2048 -keyout other-ca.key -out other-ca.crt -days 2 -subj "/CN=some other CA"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
    quiet openssl req -new -nodes -newkey rsa:2048 -keyout server.key -out server.csr -subj "/CN=localhost"
    quiet openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
    quiet openssl req -new -nodes -newkey rsa:2048 -keyout client.key -out client.csr -subj "/CN=cert_user"
    quiet openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext
    chmod 600 ./*.key
  )
  [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
  as_server_user "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  cat > "$dir/data/pg_hba.conf" <<HBA
local   all  all                      trust
hostssl all  tls_user   127.0.0.1/32  scram-sha-256
hostssl all  cert_user  127.0.0.1/32  cert
host    all  pw_user    127.0.0.1/32  scram-sha-256
host    all  postgres   127.0.0.1/32  trust
HBA
  echo "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off -c synchronous_commit=off -c ssl=on -c ssl_cert_file=$certs/server.crt -c ssl_key_file=$certs/server.key -c ssl_ca_file=$certs/ca.crt" > "$dir/options"
  as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/options")" start >/dev/null
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET password_encryption = 'scram-sha-256';
CREATE ROLE tls_user LOGIN PASSWORD 'tls-secret-1';
CREATE ROLE cert_user LOGIN;
CREATE ROLE pw_user LOGIN PASSWORD 'pw-secret-2';
CREATE DATABASE pyo3_twisted_test;
SQL
  ;;
start-pgbouncer)
  upstream=${4:?usage: $0 start-pgbouncer DIR PORT UPSTREAM_PORT}
  command -v pgbouncer >/dev/null || install_debian pgbouncer
  [ -f "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  rm -rf "$dir"
  mkdir -p "$dir"
  # Server connections log in as `bouncer`, so the tests can count them.
  "$(bindir)/psql" -h 127.0.0.1 -p "$upstream" -U postgres -d pyo3_twisted_test -qAt \
    -c "DO \$\$ BEGIN CREATE ROLE bouncer LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" >/dev/null
  echo '"postgres" ""' > "$dir/users.txt"
  cat > "$dir/pgbouncer.ini" <<INI
[databases]
pyo3_twisted_test = host=127.0.0.1 port=$upstream dbname=pyo3_twisted_test user=bouncer
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
  as_server_user pgbouncer -d -q "$dir/pgbouncer.ini"
  for _ in $(seq 100); do
    "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.1
  done
  "$(bindir)/pg_isready" -q -h 127.0.0.1 -p "$port" || { echo "pgbouncer did not start:" >&2; cat "$dir/pgbouncer.log" >&2; exit 1; }
  ;;
stop-pgbouncer)
  if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
  ;;
*)
  echo "usage: $0 start|restart|pause|resume|stop DIR [PORT]" >&2
  exit 2
  ;;
esac
