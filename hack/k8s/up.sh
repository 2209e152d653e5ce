#!/usr/bin/env bash
# Starts a real single-machine control plane: etcd, kube-apiserver (secure serving only,
# --authorization-mode=Node,RBAC, default admission plugins), kube-controller-manager and
# kube-scheduler, built by build.sh at the versions pinned in versions.env.
#
# Everything it creates lives in $K8S_DIR (default: <work tree>/.k8s, ignored by git): PKI,
# etcd data, logs, pids and admin.kubeconfig (cluster-admin). down.sh removes all of it.
# Waits until /readyz answers ok, the controller-manager and scheduler answer /healthz and the
# default ServiceAccount exists (NODEMEDIC_K8S_START_TIMEOUT seconds at most, default 180, for
# each of the two waits) and prints the kubeconfig path on stdout. When a wait runs out it says
# which check failed, what each unhealthy component's /healthz?verbose reports and its last error
# lines, before down.sh removes the logs.
# NODEMEDIC_K8S_EXTRA_CM_FLAGS adds flags to the controller-manager (tests shorten grace periods).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${K8S_DIR:-$root/.k8s}"
bin="$(bash "$here/build.sh")"

if [ -f "$dir/pids" ]; then
  echo "k8s-up: a control plane is already recorded in $dir (run 'make k8s-down' first)" >&2; exit 1
fi
mkdir -p "$dir"/{pki,etcd,logs}
pki="$dir/pki"
t0=$(date +%s%N)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); cm_port=$(free_port); sch_port=$(free_port)

# --- PKI: one CA, the serving cert, client certs per component, the service-account key pair.
ossl() { openssl "$@" 2>>"$dir/logs/pki.log" || { echo "k8s-up: openssl $1 failed:" >&2; tail -5 "$dir/logs/pki.log" >&2; exit 1; }; }
ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=nodemedic-k8s-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
issue() { # name CN O [SAN]
  local name=$1 cn=$2 o=$3 san=${4:-}
  ossl req -newkey rsa:2048 -nodes -subj "/CN=$cn${o:+/O=$o}" -keyout "$pki/$name.key" -out "$pki/$name.csr"
  local ext="$pki/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi; } > "$ext"
  ossl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$pki/$name.crt"
  rm -f "$pki/$name.csr" "$ext"
}
issue apiserver kube-apiserver "" "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue etcd etcd "" "IP:127.0.0.1,DNS:localhost"
issue admin kubernetes-admin system:masters
issue controller-manager system:kube-controller-manager ""
issue scheduler system:kube-scheduler ""
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

server="https://127.0.0.1:$api_port"
kubeconfig() { # file user cert key
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: nodemedic-k8s
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$pki/$3.crt", client-key: "$pki/$3.key"}
contexts:
- name: $2@nodemedic-k8s
  context: {cluster: nodemedic-k8s, user: $2}
current-context: $2@nodemedic-k8s
KC
}
kubeconfig "$dir/admin.kubeconfig" kubernetes-admin admin
kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler scheduler

: > "$dir/pids"
start() { # name args...
  local name=$1; shift
  setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$dir/pids"
}
start etcd "$bin/etcd" --name nodemedic --data-dir "$dir/etcd" \
  --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "nodemedic=http://127.0.0.1:$etcd_peer" \
  --cert-file "$pki/etcd.crt" --key-file "$pki/etcd.key" --client-cert-auth --trusted-ca-file "$pki/ca.crt" \
  --unsafe-no-fsync --quota-backend-bytes 1073741824
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "https://127.0.0.1:$etcd_port" --etcd-cafile "$pki/ca.crt" \
  --etcd-certfile "$pki/admin.crt" --etcd-keyfile "$pki/admin.key" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC --allow-privileged \
  --profiling=false
ready() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$server/readyz" 2>/dev/null | grep -qx ok
}
timeout_s="${NODEMEDIC_K8S_START_TIMEOUT:-180}"
# Each component's last error/warning lines (klog E/W), shortened: what a CI log needs to say why.
log_errors() { # name
  local f="$dir/logs/$1.log"
  [ -f "$f" ] || return 0
  # Without the timestamp and pid, repeats once; the requestheader CA (no front proxy here) and
  # "Skipping API ... no resources" are complaints every start makes.
  grep -E '^[EWF][0-9]{4} ' "$f" | grep -v -e 'requestheader-client-ca-file' -e 'because it has no resources' \
    | sed -E 's/^([EWF])[0-9]{4} [0-9:.]+ +[0-9]+ /\1 /' | awk '!seen[$0]++' | tail -6 \
    | cut -c1-240 | sed "s/^/  $1: /" >&2 || true
}
# Any component that exited fails the start at once, with its last log lines.
check_alive() {
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { echo "k8s-up: $name exited; last log lines:" >&2
      tail -20 "$dir/logs/$name.log" >&2; bash "$here/down.sh" >&2; exit 1; }
  done < "$dir/pids"
}
wait_ready() { # deadline (epoch seconds)
  while :; do
    ready && return 0
    check_alive
    if [ "$(date +%s)" -ge "$1" ]; then
      echo "k8s-up: /readyz did not answer ok within ${timeout_s} s; see $dir/logs" >&2
      curl -s --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "$server/readyz?verbose" 2>&1 | grep -v '^\[+\]' | head -20 | sed 's/^/  readyz: /' >&2 || true
      log_errors etcd; log_errors kube-apiserver
      bash "$here/down.sh" >&2; exit 1
    fi
    sleep 0.5
  done
}
# The controllers start once the apiserver has bootstrapped its RBAC policy: before that, their
# first reads are forbidden and they exit.
wait_ready $(( $(date +%s) + timeout_s ))
# shellcheck disable=SC2086  # the extra flags are a word list on purpose
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$cm_port" --leader-elect=false \
  --use-service-account-credentials --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" \
  --cluster-signing-key-file "$pki/ca.key" --controllers '*' --profiling=false \
  ${NODEMEDIC_K8S_EXTRA_CM_FLAGS:-}
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sch_port" --leader-elect=false --profiling=false

api_ok() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$server$1" >/dev/null 2>&1
}
healthy() { curl -skf --max-time 2 "https://127.0.0.1:$1/healthz" 2>/dev/null | grep -qx ok; }
# Why a component is not healthy: the HTTP status of its /healthz and the checks it fails.
unhealthy_report() { # name port
  local body code
  body=$(curl -sk --max-time 5 -w '\nHTTP %{http_code}' "https://127.0.0.1:$2/healthz?verbose" 2>&1) || true
  code=$(tail -1 <<<"$body")
  echo "k8s-up: $1 /healthz on :$2 is not ok (${code:-no answer}); failing checks:" >&2
  grep -E '^\[-\]|refused|timed out|error' <<<"$body" | head -12 | sed "s/^/  $1: /" >&2 || true
  log_errors "$1"
}
deadline=$(( $(date +%s) + timeout_s ))
while :; do
  # ... and the ServiceAccount controller made default/default: until then every new pod is
  # refused ("serviceaccount default not found").
  cm=0; sch=0; sa=0
  healthy "$cm_port" && cm=1
  healthy "$sch_port" && sch=1
  api_ok /api/v1/namespaces/default/serviceaccounts/default && sa=1
  if [ "$cm" = 1 ] && [ "$sch" = 1 ] && [ "$sa" = 1 ]; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "k8s-up: $server ready in $((ms / 1000)).$((ms % 1000 / 100)) s; kubeconfig: $dir/admin.kubeconfig" >&2
    echo "$dir/admin.kubeconfig"; exit 0
  fi
  check_alive
  [ "$(date +%s)" -lt "$deadline" ] || break
  ready || wait_ready "$deadline"
  sleep 0.5
done
echo "k8s-up: not ready within ${timeout_s} s of the API server: controller-manager healthy=$cm, scheduler healthy=$sch, default ServiceAccount present=$sa; see $dir/logs" >&2
[ "$cm" = 1 ] || unhealthy_report kube-controller-manager "$cm_port"
[ "$sch" = 1 ] || unhealthy_report kube-scheduler "$sch_port"
[ "$sa" = 1 ] || log_errors kube-controller-manager
bash "$here/down.sh" >&2; exit 1
