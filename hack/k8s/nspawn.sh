# shellcheck shell=bash disable=SC2154  # nd, dir, bin, name, root, kc, sock: set by the sourcing script
# Sourced by node-up.sh / node-down.sh for NODE_NSPAWN=1: the node as a booted systemd-nspawn
# container (Debian 12 rootfs of tests/system/build_rootfs.sh, an overlay under $nd/nspawn) whose
# real systemd runs containerd.service and kubelet.service. Needs: nd, dir, bin, name, root, and
# (for nspawn_boot) kubelet_args and start() from node-up.sh.

nsx() { # run a command inside the node container (its mount/pid/ipc/uts/cgroup namespaces)
  nsenter -t "$(cat "$nd/nspawn-leader")" -m -u -i -p -C -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER= "$@"
}

nspawn_units() { # the unit files, written into the overlay before boot
  local sd="$nd/nspawn/root/etc/systemd/system"
  mkdir -p "$sd"
  # containerd copies the node's /etc/hosts into every sandbox; minbase has none.
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' > "$nd/nspawn/root/etc/hosts"
  # The node dirs are bound under /tmp: systemd-tmpfiles --boot --remove would clean /tmp
  # through the binds. networkd would manage the host's links (host network).
  for u in systemd-tmpfiles-setup.service systemd-tmpfiles-clean.service \
           systemd-tmpfiles-clean.timer systemd-networkd.service systemd-networkd.socket; do
    ln -sf /dev/null "$sd/$u"
  done
  cat > "$sd/containerd.service" <<UNIT
[Unit]
Description=containerd of nodemedic real node $name
[Service]
ExecStart=/usr/bin/containerd --config $nd/containerd.toml
Delegate=yes
KillMode=process
Restart=no
StandardOutput=append:$nd/logs/containerd.log
StandardError=inherit
UNIT
  cat > "$sd/kubelet.service" <<UNIT
[Unit]
Description=kubelet of nodemedic real node $name
After=containerd.service
Wants=containerd.service
[Service]
ExecStart=$bin/kubelet ${kubelet_args[*]}
# Restart=no: a kubelet that dies stays down until someone (nodemedic's restart-service, an
# operator) restarts the unit.
Restart=no
StandardOutput=append:$nd/logs/kubelet.log
StandardError=inherit
UNIT
}

nspawn_boot() {
  local rootfs
  rootfs="$(bash "$root/tests/system/build_rootfs.sh")" || die "no nspawn rootfs (tests/system/build_rootfs.sh failed)"
  command -v systemd-nspawn >/dev/null || die "'systemd-nspawn' is not installed (apt-get install systemd-container)"
  mkdir -p "$nd/nspawn"/{upper,work,root}
  mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$nd/nspawn/upper,workdir=$nd/nspawn/work" \
    "$nd/nspawn/root" || die "cannot mount the overlay root in $nd/nspawn"
  nspawn_units
  local binds=(--bind="$dir" --bind-ro="$(dirname "$bin")" --bind-ro=/usr/lib/cni --bind=/dev/kmsg)
  local b
  for b in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr "$(command -v runc)"; do
    binds+=(--bind-ro="$b")
  done
  for b in ${NODE_NSPAWN_BINDS:-}; do binds+=(--bind="$b"); done
  for b in ${NODE_NSPAWN_BINDS_RO:-}; do binds+=(--bind-ro="$b"); done
  # The host's network (the kubelet registers with the host's address, the API server is on
  # loopback); --register=no --keep-unit: this host runs no machined. @keyring: runc gives
  # each container a session keyring; nspawn's filter refuses keyctl ("runc create failed: ...
  # unable to join session keyring: unable to create session key: operation not permitted").
  start nspawn systemd-nspawn --quiet --keep-unit --register=no --machine="$name" \
    --system-call-filter="adjtimex clock_adjtime @keyring" --capability=all "${binds[@]}" \
    -D "$nd/nspawn/root" --boot
  local npid leader="" state="" kids c
  npid="$(awk '$1 == "nspawn" {print $2}' "$nd/pids")"
  for _ in $(seq 1 300); do
    kill -0 "$npid" 2>/dev/null || die "systemd-nspawn exited: $(tail -5 "$nd/logs/nspawn.log")"
    kids=()  # the file has no final newline: read fills kids and still returns 1
    read -ra kids < "/proc/$npid/task/$npid/children" 2>/dev/null || true
    for c in "${kids[@]}"; do
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && leader=$c
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || die "the node container's systemd did not start"
  echo "$leader" > "$nd/nspawn-leader"
  for _ in $(seq 1 300); do
    state="$(nsx systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
  done
  case "$state" in running|degraded) ;; *) die "the node container did not finish booting: '$state'" ;; esac
  # nspawn mounts the v1 controllers read-only: the kubelet (cgroupfs driver) must create
  # kubepods in them.
  # shellcheck disable=SC2016  # expanded by the container's sh
  nsx sh -c 'for c in /sys/fs/cgroup/*/; do case "$c" in */unified/|*/systemd/) continue ;; esac; mount -o remount,bind,rw "$c" || exit 1; done' \
    || die "cannot make the cgroup controllers writable inside the node container"
}

nspawn_down() { # stop the units, remove what the kubelet created inside, halt the container
  local npid
  npid="$(awk '$1 == "nspawn" {print $2}' "$nd/pids" 2>/dev/null)"
  [ -n "$npid" ] || return 0
  # Without a leader (its systemd never came up) there is nothing inside to stop first.
  if [ -f "$nd/nspawn-leader" ] && kill -0 "$npid" 2>/dev/null; then
    if nsx systemctl is-active -q kubelet.service && [ -f "$dir/admin.kubeconfig" ]; then
      "${kc[@]}" delete pods -A --field-selector "spec.nodeName=$name" --grace-period 0 --force \
        --wait=false >/dev/null 2>&1 || true
      for _ in $(seq 1 40); do
        [ -z "$(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null)" ] && break; sleep 0.5
      done
    fi
    nsx systemctl stop kubelet.service >/dev/null 2>&1
    if ctr --address "$sock" version >/dev/null 2>&1; then
      for t in $(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null); do
        ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
      sleep 0.5
      for t in $(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null); do
        ctr --address "$sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
      done
    fi
    nsx systemctl stop containerd.service >/dev/null 2>&1
    # The kubepods trees as the container sees them (its memory cgroup is not the host's root).
    # shellcheck disable=SC2016  # expanded by the container's sh
    nsx sh -c 'for h in /sys/fs/cgroup/*/kubepods; do [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; ; done' 2>/dev/null
  fi
  kill -TERM "$npid" 2>/dev/null  # nspawn asks the container's systemd to halt
  for _ in $(seq 1 300); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$npid" 2>/dev/null
  rm -f "$nd/nspawn-leader"
}
