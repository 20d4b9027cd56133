#!/usr/bin/env bash
# Makes Postgres (5432), Redis (6379) and PgBouncer (6432, transaction pooling) available on
# 127.0.0.1 for the demo and the tests. Idempotent: servers that already answer are reused,
# missing packages are installed with apt, stopped servers are started. Fast when all is up.
#
# Credentials (local development only; production takes them from the environment):
#   role finworker / password finworker, database finworker.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379
BOUNCER_PORT=6432
PG_USER=finworker
PG_PASSWORD=finworker
BOUNCER_DIR=/etc/pgbouncer
BOUNCER_INI=$BOUNCER_DIR/finworker.ini
BOUNCER_USERS=$BOUNCER_DIR/finworker_userlist.txt

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

say() { printf 'setup: %s\n' "$*" >&2; }

apt_updated=0
ensure_pkg() { # ensure_pkg <command> <package>
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ] && [ ! -x "/usr/bin/$1" ]; then
    if [ "$apt_updated" = 0 ]; then
      say "apt-get update"
      $SUDO apt-get update -qq >/dev/null
      apt_updated=1
    fi
    say "installing $2"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port <port> <name>
  for _ in $(seq 1 100); do
    if port_open "$1"; then return 0; fi
    sleep 0.1
  done
  say "$2 did not come up on port $1"
  exit 1
}

# --- Postgres -----------------------------------------------------------------------------
ensure_pkg pg_ctlcluster postgresql
ensure_pkg psql postgresql-client
ver=$(ls /etc/postgresql | sort -n | tail -n 1)
conf=/etc/postgresql/$ver/main/conf.d/finworker.conf
# Tests run several apps at once, each with its own pools: raise the connection ceiling.
# Memory as for a server holding millions of debtors (the stock 128 MB of shared buffers
# cannot hold the lookup-key index of 10M debtors, and every import probe then misses it:
# docs/uploads.md, Performance); fewer checkpoints during bulk imports.
want_conf="listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = 2GB
max_wal_size = 4GB"
if [ "$(cat "$conf" 2>/dev/null)" != "$want_conf" ]; then
  printf '%s\n' "$want_conf" | $SUDO tee "$conf" >/dev/null
  if port_open $PG_PORT; then
    say "restarting postgres $ver for its new settings"
    $SUDO pg_ctlcluster "$ver" main restart
    wait_port $PG_PORT postgres
  fi
fi
if ! port_open $PG_PORT; then
  say "starting postgres $ver"
  $SUDO pg_ctlcluster "$ver" main start
  wait_port $PG_PORT postgres
fi
psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
  say "creating role $PG_USER"
  psql_admin -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_USER'")" != 1 ]; then
  say "creating database $PG_USER"
  psql_admin -c "CREATE DATABASE $PG_USER OWNER $PG_USER"
fi

# --- Redis --------------------------------------------------------------------------------
ensure_pkg redis-server redis-server
if ! port_open $REDIS_PORT; then
  say "starting redis"
  # No persistence: Postgres holds the authoritative record (docs/queue.md). Production
  # turns AOF on (docker-compose.worker.yml).
  $SUDO mkdir -p /var/log/redis
  $SUDO redis-server --port $REDIS_PORT --bind 127.0.0.1 --daemonize yes --save "" \
    --appendonly no --logfile /var/log/redis/finworker.log
  wait_port $REDIS_PORT redis
fi

# --- PgBouncer ----------------------------------------------------------------------------
ensure_pkg pgbouncer pgbouncer
if port_open $BOUNCER_PORT && ! pgrep -f "pgbouncer.*$BOUNCER_INI" >/dev/null; then
  # The distribution's own pgbouncer (its default config routes no database) holds the port.
  say "stopping the default pgbouncer on $BOUNCER_PORT to start finworker's"
  $SUDO service pgbouncer stop >/dev/null 2>&1 || $SUDO pkill -x pgbouncer || true
  for _ in $(seq 1 50); do port_open $BOUNCER_PORT || break; sleep 0.1; done
fi
if ! port_open $BOUNCER_PORT; then
  $SUDO mkdir -p $BOUNCER_DIR /var/run/postgresql /var/log/postgresql
  $SUDO chown postgres:postgres /var/run/postgresql /var/log/postgresql
  printf '"%s" "%s"\n' "$PG_USER" "$PG_PASSWORD" | $SUDO tee $BOUNCER_USERS >/dev/null
  # `* =` routes every database name (tests create one per test) to the local Postgres.
  # transaction mode is the strictest pooling mode; code correct here is correct in session mode.
  $SUDO tee $BOUNCER_INI >/dev/null <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BOUNCER_USERS
admin_users = $PG_USER
pool_mode = transaction
default_pool_size = 20
max_client_conn = 2000
server_reset_query =
ignore_startup_parameters = extra_float_digits,search_path
logfile = /var/log/postgresql/pgbouncer-finworker.log
pidfile = /var/run/postgresql/pgbouncer-finworker.pid
EOF
  $SUDO chown postgres:postgres $BOUNCER_INI $BOUNCER_USERS
  $SUDO chmod 640 $BOUNCER_USERS
  say "starting pgbouncer (transaction pooling)"
  as_postgres pgbouncer -d $BOUNCER_INI
  wait_port $BOUNCER_PORT pgbouncer
fi

# The login the demo and the tests use, end to end through PgBouncer.
if ! PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p $BOUNCER_PORT -U $PG_USER -d $PG_USER \
    -tAc 'SELECT 1' >/dev/null; then
  say "cannot log in as $PG_USER through pgbouncer on $BOUNCER_PORT (see /var/log/postgresql/pgbouncer-finworker.log)"
  exit 1
fi
# --- S3-protocol server (tests of the S3 storage backend; `--with-s3`) ----------------------
# moto's server mode from PyPI: a real S3 HTTP endpoint, in memory, on loopback. Any access
# key is accepted; buckets are created by the tests.
if [ "${1:-}" = "--with-s3" ]; then
  # promtool checks the alert rules in config/prometheus (tests/it/observability.rs).
  ensure_pkg promtool prometheus
  # The dashboard is tested end to end in headless Chromium through chromedriver
  # (tests/it/dashboard.rs).
  ensure_pkg chromium chromium
  ensure_pkg chromedriver chromium-driver
  MOTO_PORT=${FINWORKER_TEST_S3_PORT:-9100}
  MOTO_VENV=/opt/finworker-moto
  if ! port_open $MOTO_PORT; then
    if [ ! -x $MOTO_VENV/bin/moto_server ]; then
      say "installing moto (S3 test server) into $MOTO_VENV"
      $SUDO python3 -m venv $MOTO_VENV
      $SUDO $MOTO_VENV/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
    fi
    say "starting moto S3 server on 127.0.0.1:$MOTO_PORT"
    $SUDO mkdir -p /var/log/finworker
    setsid nohup $MOTO_VENV/bin/moto_server -H 127.0.0.1 -p $MOTO_PORT \
      > /var/log/finworker/moto.log 2>&1 < /dev/null &
    wait_port $MOTO_PORT moto
  fi
  say "ready: s3 (moto) 127.0.0.1:$MOTO_PORT"

  # A three-primary Redis Cluster on loopback (tests/it/cluster.rs): Debian's redis-server in
  # cluster mode, no persistence (test data only), no eviction.
  CLUSTER_DIR=/var/lib/finworker-redis-cluster
  cluster_ok() { redis-cli -p 7001 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }
  if ! cluster_ok; then
    for p in 7001 7002 7003; do
      if ! port_open $p; then
        $SUDO mkdir -p $CLUSTER_DIR/$p
        $SUDO redis-server --port $p --bind 127.0.0.1 --cluster-enabled yes \
          --cluster-config-file $CLUSTER_DIR/$p/nodes.conf --dir $CLUSTER_DIR/$p \
          --save '' --appendonly no --maxmemory-policy noeviction \
          --daemonize yes --logfile $CLUSTER_DIR/$p/redis.log
        wait_port $p "redis cluster node $p"
      fi
    done
    # Nodes that came back with their nodes.conf form the cluster again by themselves.
    for _ in $(seq 1 20); do cluster_ok && break; sleep 0.25; done
    if ! cluster_ok; then
      say "creating the redis cluster on 127.0.0.1:7001-7003"
      for p in 7001 7002 7003; do
        redis-cli -p $p flushall >/dev/null 2>&1 || true
        redis-cli -p $p cluster reset hard >/dev/null
      done
      redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
        --cluster-replicas 0 --cluster-yes >/dev/null
      for _ in $(seq 1 80); do cluster_ok && break; sleep 0.25; done
      cluster_ok || { say "the redis cluster did not come up (see $CLUSTER_DIR/*/redis.log)"; exit 1; }
    fi
  fi
  say "ready: redis cluster 127.0.0.1:7001-7003 (3 primaries)"
fi
say "ready: postgres 127.0.0.1:$PG_PORT, pgbouncer 127.0.0.1:$BOUNCER_PORT, redis 127.0.0.1:$REDIS_PORT"
