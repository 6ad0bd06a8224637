#!/usr/bin/env bash
# Starts the local test stack on loopback: etcd + kube-apiserver, Prometheus, RabbitMQ
# (management plugin), PostgreSQL primary + streaming replica, and moto (AWS ECS/RDS).
# Idempotent: a service already running is left alone. Writes $STACK_DIR/env, which
# tests source to find everything (KUBECONFIG, URLs, ports). Installs what the services need
# first (a no-op once done), so it works by hand on a fresh machine too.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$HACK_DIR/install-deps.sh"

mkdir -p "$STACK_DIR/logs" "$STACK_DIR/run"
ENV_FILE="$STACK_DIR/env"
PORTS_FILE="$STACK_DIR/ports"

# Ports are picked once per stack dir and kept, so a restarted service comes back where
# tests expect it.
if [ ! -f "$PORTS_FILE" ]; then
  {
    for name in ETCD ETCD_PEER APISERVER PROMETHEUS RABBIT_AMQP RABBIT_MGMT RABBIT_DIST EPMD PG_PRIMARY PG_REPLICA MOTO; do
      echo "${name}_PORT=$(free_port)"
    done
  } >"$PORTS_FILE"
fi
source "$PORTS_FILE"

running() { [ -f "$STACK_DIR/run/$1.pid" ] && kill -0 "$(cat "$STACK_DIR/run/$1.pid")" 2>/dev/null; }

# start NAME CMD...: runs CMD in its own session (so stack-down can stop its whole
# process group), logging to logs/NAME.log.
start() {
  local name=$1; shift
  if running "$name"; then log "$name already running"; return 1; fi
  setsid "$@" >"$STACK_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK_DIR/run/$name.pid"
  log "$name started (pid $!)"
}

# --- etcd + kube-apiserver ---------------------------------------------------------
"$HACK_DIR/build-testbins.sh"
KUBE_BIN="$CACHE_DIR/bin/kube-$KUBE_VERSION"
ETCD_BIN="$CACHE_DIR/bin/etcd-$ETCD_VERSION"

PKI="$STACK_DIR/pki"
if [ ! -f "$PKI/serving.crt" ]; then
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=levee-test-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$PKI/serving.key" -out "$PKI/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$PKI/san.ext"
  openssl x509 -req -in "$PKI/serving.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -extfile "$PKI/san.ext" -out "$PKI/serving.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # A static admin token: the test user is in system:masters.
  echo "$(openssl rand -hex 16),levee-admin,levee-admin,system:masters" >"$PKI/tokens.csv"
fi
TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")

start etcd "$ETCD_BIN/etcd" --name levee-test --data-dir "$STACK_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "levee-test=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync || true
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 \
  --cert-dir "$PKI" --tls-cert-file "$PKI/serving.crt" --tls-private-key-file "$PKI/serving.key" \
  --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
  --disable-admission-plugins ServiceAccount \
  --service-account-issuer "https://127.0.0.1:$APISERVER_PORT" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --endpoint-reconciler-type none || true
wait_for kube-apiserver 120 curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN" \
  "https://127.0.0.1:$APISERVER_PORT/readyz"

KUBECONFIG_FILE="$STACK_DIR/kubeconfig"
cat >"$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: levee-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: levee-admin
  user:
    token: $TOKEN
contexts:
- name: levee-test
  context: { cluster: levee-test, user: levee-admin, namespace: default }
current-context: levee-test
KC

# --- Prometheus ---------------------------------------------------------------------
mkdir -p "$STACK_DIR/prometheus"
cat >"$STACK_DIR/prometheus/prometheus.yml" <<PY
global: { scrape_interval: 5s, evaluation_interval: 5s }
scrape_configs:
  - job_name: prometheus
    static_configs: [{ targets: ["127.0.0.1:$PROMETHEUS_PORT"] }]
PY
start prometheus prometheus --config.file "$STACK_DIR/prometheus/prometheus.yml" \
  --storage.tsdb.path "$STACK_DIR/prometheus/data" --web.listen-address "127.0.0.1:$PROMETHEUS_PORT" \
  --web.enable-remote-write-receiver --web.enable-lifecycle || true
wait_for prometheus 60 curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"

# --- RabbitMQ -----------------------------------------------------------------------
RMQ="$STACK_DIR/rabbitmq"
mkdir -p "$RMQ"
cat >"$RMQ/rabbitmq.conf" <<RC
listeners.tcp.1 = 127.0.0.1:$RABBIT_AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBIT_MGMT_PORT
loopback_users = none
RC
echo '[rabbitmq_management].' >"$RMQ/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$RMQ/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ/enabled_plugins" \
  RABBITMQ_MNESIA_BASE="$RMQ/mnesia" RABBITMQ_LOG_BASE="$RMQ/log" RABBITMQ_NODENAME="levee@localhost" \
  RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_PID_FILE="$RMQ/rabbit.pid" HOME="$RMQ"
# The Debian wrapper in /usr/sbin switches to the rabbitmq user, who cannot write our
# stack dir; the script behind it runs as whoever starts it.
start rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server || true
wait_for rabbitmq 120 curl -sf -u guest:guest "http://127.0.0.1:$RABBIT_MGMT_PORT/api/overview"

# --- PostgreSQL primary + streaming replica ------------------------------------------
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PG="$STACK_DIR/postgres"
# initdb refuses to run as root; the package's postgres user owns the clusters.
pg_user=(); [ "$(id -u)" = 0 ] && pg_user=(runuser -u postgres --)
mkdir -p "$PG"; [ "$(id -u)" = 0 ] && chown postgres "$PG"
pg_running() { "${pg_user[@]}" "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }
if [ ! -f "$PG/primary/PG_VERSION" ]; then
  "${pg_user[@]}" "$PG_BIN/initdb" -D "$PG/primary" -A trust -U postgres >"$STACK_DIR/logs/initdb.log"
  cat >>"$PG/primary/postgresql.conf" <<PC
listen_addresses = '127.0.0.1'
port = $PG_PRIMARY_PORT
unix_socket_directories = '$PG'
wal_level = replica
max_wal_senders = 5
hot_standby = on
fsync = off
PC
  echo "host replication all 127.0.0.1/32 trust" >>"$PG/primary/pg_hba.conf"
fi
pg_running "$PG/primary" || "${pg_user[@]}" "$PG_BIN/pg_ctl" -D "$PG/primary" -l "$PG/primary.log" -w -t 60 start >/dev/null
log "postgres primary ready on $PG_PRIMARY_PORT"
if [ ! -f "$PG/replica/PG_VERSION" ]; then
  "${pg_user[@]}" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -D "$PG/replica" -R -X stream
  echo "port = $PG_REPLICA_PORT" >>"$PG/replica/postgresql.conf"
fi
pg_running "$PG/replica" || "${pg_user[@]}" "$PG_BIN/pg_ctl" -D "$PG/replica" -l "$PG/replica.log" -w -t 60 start >/dev/null
wait_for "postgres replica streaming" 60 bash -c \
  "psql -h 127.0.0.1 -p $PG_PRIMARY_PORT -U postgres -Atc \"select count(*) from pg_stat_replication where state='streaming'\" | grep -x 1 >/dev/null"

# --- moto (AWS ECS, RDS and SQS) ------------------------------------------------------
MOTO_BIN=$(ls -d "$CACHE_DIR"/venv-moto-*/bin | sort -V | tail -1)
start moto "$MOTO_BIN/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" || true
wait_for moto 60 curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/"

cat >"$ENV_FILE" <<ENV
# Written by hack/stack-up.sh: where the local test stack listens.
export KUBECONFIG=$KUBECONFIG_FILE
export LEVEE_TEST_STACK=1
export LEVEE_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
export LEVEE_RABBITMQ_URL=http://127.0.0.1:$RABBIT_MGMT_PORT
export LEVEE_RABBITMQ_USER=guest
export LEVEE_RABBITMQ_PASSWORD=guest
export LEVEE_RABBITMQ_AMQP_PORT=$RABBIT_AMQP_PORT
export LEVEE_PG_PRIMARY="host=127.0.0.1 port=$PG_PRIMARY_PORT user=postgres dbname=postgres"
export LEVEE_PG_REPLICA="host=127.0.0.1 port=$PG_REPLICA_PORT user=postgres dbname=postgres"
export LEVEE_AWS_ENDPOINT=http://127.0.0.1:$MOTO_PORT
export LEVEE_HELM=$CACHE_DIR/bin/helm-$HELM_VERSION/helm
export LEVEE_KUBECTL=$CACHE_DIR/bin/kube-$KUBE_VERSION/kubectl
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
ENV
log "stack up; source $ENV_FILE"
