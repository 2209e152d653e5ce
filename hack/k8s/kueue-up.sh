#!/usr/bin/env bash
# Installs Kueue on the control plane of up.sh and runs its manager as a local process.
#
# Applies the CRDs of the pinned module (kueue-build.sh copies config/components/crd/bases) with
# the pinned kubectl (server-side: the Workload CRD is too large for client-side apply's
# annotation), then starts `kueue --config` with:
#   - internalCertManagement off: its cert rotator needs an in-cluster Service, a Secret and the
#     webhook configurations of the kustomize install, none of which exists for a local process;
#   - its webhook server on 127.0.0.1 with a self-signed certificate made here, and *no* webhook
#     configuration registered in the API server: nothing calls it, so the defaulting webhooks do
#     not run (whoever creates a Job sets `suspend: true` itself, as the Job webhook would);
#   - the metrics certificate at the path Kueue v0.17 reads without internal cert management
#     (/etc/kueue/metrics/certs, fixed in cmd/kueue/main.go), bind-mounted from $KUEUE_DIR in a
#     private mount namespace (unshare -m), so the host's /etc gets only an empty mount point;
#   - leader election off, only the batch/job integration, and the feature gates of
#     KUEUE_FEATURE_GATES (default below: topology-aware scheduling and failed-node replacement;
#     VisibilityOnDemand off, its aggregated API server is not registered either), then those of
#     KUEUE_EXTRA_FEATURE_GATES (a later value of the same gate wins).
#
# KUBECONFIG (default $K8S_DIR/admin.kubeconfig, cluster-admin) says where; everything lives in
# $KUEUE_DIR (default $K8S_DIR/kueue). Waits for its /readyz (90 s at most) and prints KUEUE_DIR on
# stdout. kueue-down.sh undoes it all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
k8s_dir="${K8S_DIR:-$root/.k8s}"
kubeconfig="${KUBECONFIG:-$k8s_dir/admin.kubeconfig}"
dir="${KUEUE_DIR:-$k8s_dir/kueue}"
gates="${KUEUE_FEATURE_GATES:-TopologyAwareScheduling=true,TASFailedNodeReplacement=true,TASFailedNodeReplacementFailFast=true,TASReplaceNodeOnPodTermination=true,TASReplaceNodeOnNodeTaints=true,VisibilityOnDemand=false}"
gates="$gates${KUEUE_EXTRA_FEATURE_GATES:+,$KUEUE_EXTRA_FEATURE_GATES}"
kbin="$(bash "$here/build.sh")"
cache="$(bash "$here/kueue-build.sh")"
[ -f "$kubeconfig" ] || { echo "kueue-up: no kubeconfig at $kubeconfig (run 'make k8s-up' first)" >&2; exit 1; }
if [ -f "$dir/pid" ]; then
  echo "kueue-up: a Kueue is already recorded in $dir (run hack/k8s/kueue-down.sh first)" >&2; exit 1
fi
mkdir -p "$dir"/{webhook-certs,metrics-certs,logs}
kubectl() { "$kbin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
t0=$(date +%s%N)

kubectl apply --server-side --force-conflicts -f "$cache/crd" > "$dir/logs/crds.log" 2>&1 \
  || { echo "kueue-up: applying Kueue's CRDs failed:" >&2; tail -20 "$dir/logs/crds.log" >&2; exit 1; }
kubectl wait --for condition=established --timeout=60s -f "$cache/crd" >> "$dir/logs/crds.log" 2>&1 \
  || { echo "kueue-up: Kueue's CRDs were not established:" >&2; tail -20 "$dir/logs/crds.log" >&2; exit 1; }
kubectl create namespace kueue-system >> "$dir/logs/crds.log" 2>&1 || true

cert() { # dir CN
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$1/tls.key" -out "$1/tls.crt" 2>>"$dir/logs/pki.log" \
    || { echo "kueue-up: openssl failed:" >&2; tail -5 "$dir/logs/pki.log" >&2; exit 1; }
}
cert "$dir/webhook-certs" kueue-webhook
cert "$dir/metrics-certs" kueue-metrics

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
health=$(free_port); metrics=$(free_port); webhook=$(free_port)
cat > "$dir/config.yaml" <<CFG
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health: {healthProbeBindAddress: "127.0.0.1:$health"}
metrics: {bindAddress: "127.0.0.1:$metrics"}
webhook: {host: 127.0.0.1, port: $webhook, certDir: "$dir/webhook-certs"}
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
manageJobsWithoutQueueName: false
integrations: {frameworks: ["batch/job"]}
CFG
mkdir -p /etc/kueue/metrics/certs  # an empty mount point; the files stay in $dir
echo "$health" > "$dir/health-port"
# shellcheck disable=SC2016  # $1 and $@ are the inner shell's, on purpose
setsid unshare --mount --propagation private sh -c \
  'mount --bind "$1" /etc/kueue/metrics/certs && shift && exec "$@"' kueue-up \
  "$dir/metrics-certs" "$cache/bin/kueue" --kubeconfig "$kubeconfig" --config "$dir/config.yaml" \
  --feature-gates "$gates" --zap-log-level=3 > "$dir/logs/kueue.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$dir/pid"

for _ in $(seq 1 180); do
  if curl -sf --max-time 2 "http://127.0.0.1:$health/readyz" >/dev/null 2>&1; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "kueue-up: Kueue $(basename "$cache") ready in $((ms / 1000)).$((ms % 1000 / 100)) s (gates $gates); log: $dir/logs/kueue.log" >&2
    echo "$dir"; exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "kueue-up: the Kueue manager exited; last log lines:" >&2; tail -20 "$dir/logs/kueue.log" >&2
    KUEUE_DIR="$dir" KUBECONFIG="$kubeconfig" bash "$here/kueue-down.sh" >&2; exit 1
  fi
  sleep 0.5
done
echo "kueue-up: Kueue's /readyz did not answer within 90 s; see $dir/logs/kueue.log" >&2
KUEUE_DIR="$dir" KUBECONFIG="$kubeconfig" bash "$here/kueue-down.sh" >&2; exit 1
