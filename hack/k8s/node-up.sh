#!/usr/bin/env bash
# Starts ONE real node under the control plane of up.sh: Debian's containerd + runc and the pinned
# kubelet (build.sh), registered as $NODE_NAME (default nodemedic-node-1) with a client cert signed
# by $K8S_DIR/pki/ca (CN=system:node:<name>, O=system:nodes: the Node authorizer's identity).
#
# Nothing is pulled: hack/k8s/oci_image.py builds nodemedic.local/busybox:1 (the test image) from
# busybox-static and nodemedic.local/pause:2 (containerd's sandbox_image: Kubernetes' own pause,
# build/pause/linux/pause.c of the pinned k8s.io/kubernetes module compiled static with gcc, as
# /pause, so every pod sandbox runs a process named pause as on any node), and they are imported
# into containerd's k8s.io namespace. Pods get a CNI bridge (Debian's
# containernetworking-plugins) so the node turns Ready; the bridge does no NAT (no iptables rules).
#
# Everything lives in $K8S_DIR/nodes/<name>/ (containerd root/state/socket, kubelet root dir,
# certs, CNI state, logs, pids); the kubelet uses the cgroupfs driver (the host has no systemd)
# with cgroupRoot=/ so pods land in the standard kubepods tree. node-down.sh undoes all of it.
#
# More nodes on one host: each needs its own NODE_NAME, NODE_BRIDGE, NODE_POD_CIDR and
# NODE_CGROUP_ROOT (kubelet's cgroupRoot, e.g. /nodemedic-node-2: its pods in
# /sys/fs/cgroup/<hierarchy>/nodemedic-node-2/kubepods, created here in every hierarchy);
# $nd/cgroupfs then holds that node's view of the cgroupfs (each hierarchy's <root> bound at
# cgroupfs/<hierarchy>) for its agent's --path.cgroupfs. Only one of them may run kube-proxy
# (one set of KUBE-* chains per network namespace).
#
# NODE_NSPAWN=1: containerd and the kubelet run as systemd units (containerd.service,
# kubelet.service, Restart=no) inside a booted Debian 12 systemd-nspawn container of
# tests/system/build_rootfs.sh (an overlay in $nd/nspawn, the host's network, the node's dirs
# bound at the same paths), so `systemctl restart kubelet.service` in that container restarts the
# real kubelet through real systemd. nspawn mounts the v1 controllers read-only; they are
# bind-remounted read-write inside so the kubelet can create kubepods. NODE_NSPAWN_BINDS: more
# host directories (space-separated) bound read-write at the same path, NODE_NSPAWN_BINDS_RO
# read-only (a checkout and its venv, to run an agent inside).
#
# NODE_KUBE_PROXY=1: the pinned kube-proxy too, in iptables mode, on the host's network namespace
# (client cert CN=system:kube-proxy: the system:node-proxier binding), leaving the host's conntrack
# sysctls alone. node-down.sh runs `kube-proxy --cleanup` and removes every KUBE-* chain that was
# not there before node-up (hack/k8s/kube_chains.py: the kubelet adds some too).
# Prints "<name> <kubelet read-only URL>" on stdout once the Node is Ready (90 s at most).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${K8S_DIR:-$root/.k8s}"
name="${NODE_NAME:-nodemedic-node-1}"
bin="$(bash "$here/build.sh")"
nd="$dir/nodes/$name"
pki="$dir/pki"
IMAGE=nodemedic.local/busybox:1
PAUSE=nodemedic.local/pause:2
BRIDGE="${NODE_BRIDGE:-nmbr0}"
POD_CIDR="${NODE_POD_CIDR:-10.244.1.0/24}"
CGROUP_ROOT="${NODE_CGROUP_ROOT:-/}"
case "$CGROUP_ROOT" in /|/[A-Za-z0-9]*) ;; *) echo "node-up: NODE_CGROUP_ROOT must be / or /<name>" >&2; exit 1 ;; esac
cg_sub="${CGROUP_ROOT#/}"  # "" for the host's root

die() { echo "node-up($name): $*" >&2; exit 1; }
[ -f "$dir/admin.kubeconfig" ] || die "no control plane in $dir (run hack/k8s/up.sh first)"
[ -f "$nd/pids" ] && die "already running in $nd (run hack/k8s/node-down.sh first)"
for c in containerd containerd-shim-runc-v2 runc ctr; do
  command -v "$c" >/dev/null || die "'$c' is not installed (apt-get install containerd runc)"
done
[ -x /usr/lib/cni/bridge ] || die "no CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
# One kubelet per cgroupRoot (/ is the layout nodemedic reads in production).
kp="/sys/fs/cgroup/memory${cg_sub:+/$cg_sub}/kubepods"
[ -d "$kp" ] && die "$kp exists: another kubelet runs on this host with cgroupRoot $CGROUP_ROOT (or its leftovers: rmdir the kubepods trees)"
mkdir -p "$nd"/{containerd/root,containerd/state,runc,kubelet,certs,cni/net.d,cni/data,logs,images}
t0=$(date +%s%N)
: > "$nd/pids"
# What node-down.sh may remove: network namespaces not present now, kubepods if we create it.
find /run/netns -maxdepth 1 -name 'cni-*' 2>/dev/null > "$nd/netns-before" || true
touch "$nd/created-kubepods"
printf '%s\n' "$CGROUP_ROOT" > "$nd/cgroup-root"
printf '%s\n' "$BRIDGE" > "$nd/bridge"
python3 "$here/kube_chains.py" snapshot "$nd/iptables-before"
cleanup_on_error() { echo "node-up($name): failed; last log lines:" >&2; tail -n 15 "$nd"/logs/*.log >&2 || true; NODE_NAME="$name" bash "$here/node-down.sh" >&2 || true; }
# On every way out but success (a failed command, die, Ctrl-C, a timeout's TERM): what was
# started so far is stopped, so the next node-up is not refused as "already running".
up_ok=0
trap '[ "$up_ok" = 1 ] || cleanup_on_error' EXIT
trap 'exit 1' INT TERM
if [ -n "$cg_sub" ]; then
  # The kubelet wants its cgroupRoot to exist in every hierarchy; its agent gets a view of it.
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"; [ -f "$h/cgroup.procs" ] || continue
    [ -d "$h/$cg_sub" ] || { mkdir "$h/$cg_sub" && echo "$h/$cg_sub" >> "$nd/created-cgroup-root"; }
    mkdir -p "$nd/cgroupfs/${h##*/}"
    mount --bind "$h/$cg_sub" "$nd/cgroupfs/${h##*/}"
  done
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kubelet_port=$(free_port); healthz_port=$(free_port); ro_port=$(free_port)
# The kubelet refuses a loopback node IP ("nodeIP can't be loopback address"): the host's own.
node_ip="${NODE_IP:-$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}"
[ -n "$node_ip" ] || die "cannot find this host's IPv4 address (set NODE_IP)"
server="$(sed -n 's/.*server: "\(.*\)".*/\1/p' "$dir/admin.kubeconfig" | head -1)"

# --- the node's identity
openssl req -newkey rsa:2048 -nodes -subj "/CN=system:node:$name/O=system:nodes" \
  -keyout "$nd/certs/kubelet-client.key" -out "$nd/certs/kubelet-client.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$nd/certs/ext"
openssl x509 -req -in "$nd/certs/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$nd/certs/ext" -out "$nd/certs/kubelet-client.crt" 2>/dev/null
rm -f "$nd/certs/kubelet-client.csr" "$nd/certs/ext"
cat > "$nd/kubelet.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: nodemedic-k8s
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: system:node:$name
  user: {client-certificate: "$nd/certs/kubelet-client.crt", client-key: "$nd/certs/kubelet-client.key"}
contexts:
- name: node@nodemedic-k8s
  context: {cluster: nodemedic-k8s, user: "system:node:$name"}
current-context: node@nodemedic-k8s
KC

if [ "${NODE_KUBE_PROXY:-0}" = 1 ]; then
  openssl req -newkey rsa:2048 -nodes -subj "/CN=system:kube-proxy" \
    -keyout "$nd/certs/kube-proxy.key" -out "$nd/certs/kube-proxy.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$nd/certs/ext"
  openssl x509 -req -in "$nd/certs/kube-proxy.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$nd/certs/ext" -out "$nd/certs/kube-proxy.crt" 2>/dev/null
  rm -f "$nd/certs/kube-proxy.csr" "$nd/certs/ext"
  sed -e "s|kubelet-client|kube-proxy|g" -e "s|system:node:$name|system:kube-proxy|g" \
    "$nd/kubelet.kubeconfig" > "$nd/kube-proxy.kubeconfig"
fi

# --- containerd (its own root, state, socket and runc root; CRI with the local sandbox image)
sock="$nd/containerd/containerd.sock"
cat > "$nd/containerd.toml" <<TOML
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj (the sandbox asks -998) and fails
  # with "can't get final child's PID from pipe: EOF". Keep scores >= containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$nd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni/net.d"
TOML
cat > "$nd/cni/net.d/10-nodemedic.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "nodemedic-$name", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$nd/cni/data", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
CNI
start() { # name args...
  local pname=$1; shift
  setsid "$@" > "$nd/logs/$pname.log" 2>&1 < /dev/null &
  echo "$pname $!" >> "$nd/pids"
}
kubelet_args=(--config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig"
  --root-dir "$nd/kubelet" --cert-dir "$nd/certs" --hostname-override "$name"
  --node-ip "$node_ip" --v 1)
nspawn="${NODE_NSPAWN:-0}"
if [ "$nspawn" = 1 ]; then
  # shellcheck source=hack/k8s/nspawn.sh
  . "$here/nspawn.sh"
  nspawn_boot
  nsx systemctl start containerd.service
else
  start containerd containerd --config "$nd/containerd.toml"
fi
for _ in $(seq 1 100); do ctr --address "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr --address "$sock" version >/dev/null 2>&1 || die "containerd did not answer on $sock"

# --- the images (built once per busybox, cached next to the binaries)
imgs="$(dirname "$bin")/images"; mkdir -p "$imgs"
[ -s "$imgs/busybox.tar" ] || python3 "$here/oci_image.py" "$imgs/busybox.tar" "$IMAGE"
if [ ! -s "$imgs/pause-2.tar" ]; then
  command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
  kube_dir=$(cd "$here/kube" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json k8s.io/kubernetes \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    || die "cannot download the k8s.io/kubernetes module for pause.c (see make k8s-build)"
  # shellcheck source=/dev/null
  gcc -Os -Wall -Werror -static -DVERSION="$(source "$here/versions.env"; echo "$KUBE_VERSION")" \
    -o "$imgs/pause" "$kube_dir/build/pause/linux/pause.c" 2>> "$nd/logs/images.log" \
    || die "gcc could not build pause.c (needs gcc and libc6-dev); see $nd/logs/images.log"
  python3 "$here/oci_image.py" "$imgs/pause-2.tar" "$PAUSE" --add "/pause=$imgs/pause" /pause
fi
for t in busybox pause-2; do
  ctr --address "$sock" -n k8s.io images import "$imgs/$t.tar" >> "$nd/logs/images.log" 2>&1
done

# --- kubelet
cat > "$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host (hybrid): kubelet >= 1.35 refuses v1 unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$sock
address: $node_ip
port: $kubelet_port
readOnlyPort: $ro_port
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
failSwapOn: false
# The imported images must never be garbage-collected: they cannot be pulled back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
podCIDR: "$POD_CIDR"
resolvConf: ""
staticPodPath: ""
serializeImagePulls: false
YAML
if [ "$nspawn" = 1 ]; then
  nsx systemctl start kubelet.service
else
  start kubelet "$bin/kubelet" "${kubelet_args[@]}"
fi

if [ "${NODE_KUBE_PROXY:-0}" = 1 ]; then
  cat > "$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $name
clientConnection: {kubeconfig: "$nd/kube-proxy.kubeconfig"}
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
# The host's conntrack sysctls (nf_conntrack_max, TCP timeouts) stay as they are; no
# route_localnet for NodePorts on 127.0.0.1.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 0s}
YAML
  start kube-proxy "$bin/kube-proxy" --config "$nd/kube-proxy.yaml" --v 1
fi

kc=("$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig")
for _ in $(seq 1 180); do
  ready="$("${kc[@]}" get node "$name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  if [ "$ready" = True ] && { [ "${NODE_KUBE_PROXY:-0}" != 1 ] || iptables-save -t nat 2>/dev/null | grep -q '^:KUBE-SERVICES'; }; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "node-up($name): Ready in $((ms / 1000)).$((ms % 1000 / 100)) s; kubelet read-only http://$node_ip:$ro_port" >&2
    printf '%s\n' "$ro_port" > "$nd/readonly-port"
    up_ok=1; echo "$name http://$node_ip:$ro_port"; exit 0
  fi
  while read -r pname pid; do
    kill -0 "$pid" 2>/dev/null || { echo "node-up($name): $pname exited" >&2; false; }
  done < "$nd/pids"
  if [ "$nspawn" = 1 ]; then
    for u in containerd kubelet; do
      nsx systemctl is-active -q "$u.service" || { echo "node-up($name): $u.service is $(nsx systemctl is-active "$u.service")" >&2; false; }
    done
  fi
  sleep 0.5
done
echo "node-up($name): the Node did not turn Ready within 90 s: $("${kc[@]}" get node "$name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].message}' 2>&1)" >&2
false
