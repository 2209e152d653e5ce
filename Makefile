# nodemedic — every target installs what it needs; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# `make run` is for trying nodemedic out: loopback only, and dry-run (rules are evaluated and every
# action is logged, none is executed). An operator opts out explicitly:
#   make run DRY_RUN=0 LISTEN=:9678
LISTEN ?= 127.0.0.1:9678
DRY_RUN ?= 1
RUN_ARGS ?=
PYTEST_ARGS ?=
# Debian packages the tests drive for real (promtool/prometheus, node_exporter as the benchmark
# reference, iptables/conntrack/ipvsadm/iproute2 for the kernel tests, systemd-analyze, curl,
# systemd-journal-remote for the journal source tests; debootstrap, systemd-nspawn, lintian,
# strip and python3-venv for the .deb and the real-systemd tier).
APT_PACKAGES := prometheus prometheus-node-exporter iptables conntrack ipvsadm iproute2 systemd procps shellcheck curl systemd-journal-remote debootstrap systemd-container lintian binutils python3-venv
APT_PROBES := /usr/bin/promtool /usr/bin/prometheus /usr/bin/prometheus-node-exporter /usr/sbin/iptables /usr/sbin/conntrack /usr/sbin/ipvsadm /usr/sbin/ip /usr/bin/systemd-analyze /usr/bin/shellcheck /usr/bin/curl /lib/systemd/systemd-journal-remote /usr/sbin/debootstrap /usr/bin/systemd-nspawn /usr/bin/lintian /usr/bin/strip

.PHONY: run test lint bench install uninstall venv system-deps clean demo apiserver check-rules deb dist \
	k8s-build k8s-up k8s-down test-real node-deps cluster-up cluster-down

# The agent and the simulation (sim/: the in-memory API server, the demo, replay) in one pip
# call, so the `sim` extra's nodemedic-sim is this checkout's sim/, never an index's.
$(STAMP): pyproject.toml sim/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -U pip
	$(PIP) install -q --disable-pip-version-check -e '.[test,sim]' -e ./sim
	touch $(STAMP)

venv: $(STAMP)

## run: the agent on this machine with the default rules, dry-run on 127.0.0.1 (see DRY_RUN).
run: $(STAMP)
	$(if $(filter-out 0 1,$(DRY_RUN)),$(error DRY_RUN must be 1 (default: execute nothing) or 0 (execute actions), not '$(DRY_RUN)'))
	$(VENV)/bin/nodemedic run --web.listen-address $(LISTEN) --rules.dir rules --problems.dir problems --state.dir .state $(if $(filter 1,$(DRY_RUN)),--dry-run) $(RUN_ARGS)

demo: $(STAMP)
	$(VENV)/bin/nodemedic demo

check-rules: $(STAMP)
	$(VENV)/bin/nodemedic check-rules rules/ --problems problems/

# Debian's prometheus and prometheus-node-exporter start their services when installed (on
# :9090 and :9100); the tests run their own instances on free ports and need none. Only a service
# this target itself just installed is stopped (systemctl when systemd is PID 1, else the package's
# init.d script): an operator's own Prometheus on the machine is never touched.
APT_SERVICES := prometheus prometheus-node-exporter
system-deps:
	@missing=0; for p in $(APT_PROBES); do test -x $$p || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    new=; for s in $(APT_SERVICES); do \
	      dpkg-query -W -f='$${Status}' $$s 2>/dev/null | grep -q ' installed$$' || new="$$new $$s"; \
	    done; \
	    echo "installing Debian packages: $(APT_PACKAGES)"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	    rc=$$?; for s in $$new; do \
	      if [ "$$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then systemctl stop "$$s" >/dev/null 2>&1 || true; \
	      elif [ -x "/etc/init.d/$$s" ]; then "/etc/init.d/$$s" stop >/dev/null 2>&1 || true; fi; \
	    done; \
	    [ $$rc = 0 ] || exit $$rc; \
	  else echo "warning: not root or no apt-get; tests needing $(APT_PACKAGES) will skip"; fi; \
	fi

## test: install everything the tests need (the real control plane, Kueue, what real nodes need),
## then run them, the real-node tier included (root; `make test NODEMEDIC_K8S_NODES=0` leaves it out).
NODEMEDIC_K8S_NODES ?= 1
test: system-deps node-deps $(STAMP) k8s-build kueue-build
	NODEMEDIC_STRICT_SKIPS=1 NODEMEDIC_K8S_NODES=$(NODEMEDIC_K8S_NODES) $(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## test-real: only the real-control-plane tier (NODEMEDIC_K8S_KUBECONFIG=... for an existing cluster).
test-real: system-deps $(STAMP) k8s-build kueue-build
	$(VENV)/bin/pytest -q -p no:cacheprovider -m k8s_real $(PYTEST_ARGS)

## k8s-build: build etcd and the Kubernetes control plane pinned in hack/k8s/versions.env (cached
## under ~/.cache/nodemedic/k8s; needs Go >= 1.25).
k8s-build:
	@bash hack/k8s/build.sh >/dev/null

## k8s-up / k8s-down: a real control plane on this machine; kubeconfig in .k8s/admin.kubeconfig.
k8s-up:
	@bash hack/k8s/up.sh >/dev/null

k8s-down:
	@bash hack/k8s/down.sh

## node-deps: what a real node needs from Debian (containerd, runc, CNI plugins, static busybox;
## gcc and libc6-dev build Kubernetes' pause.c static for the sandbox image).
NODE_APT_PACKAGES := containerd runc containernetworking-plugins busybox-static gcc libc6-dev
node-deps:
	@if ! command -v containerd >/dev/null || ! test -x /usr/bin/runc || ! test -x /usr/lib/cni/bridge || ! file -L /bin/busybox | grep -q 'statically linked' || ! command -v gcc >/dev/null || ! test -f /usr/lib/x86_64-linux-gnu/libc.a; then \
	  echo "installing Debian packages: $(NODE_APT_PACKAGES)"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(NODE_APT_PACKAGES) >/dev/null; \
	fi
	@# Debian's containerd package starts its own service where systemd runs; ours has its own socket.

## cluster-up / cluster-down: the control plane + CLUSTER_NODES (default 2) real nodes (kubelet,
## containerd, runc; kube-proxy in iptables mode on the first) + a nodemedic agent per node
## (dry-run); .k8s/cluster.json names each node, its agent URL and the local image.
## CLUSTER_NSPAWN=1: one node as a booted systemd-nspawn container, kubelet.service under its
## systemd, the agent inside it.
cluster-up: $(STAMP) k8s-build node-deps
	@bash hack/k8s/cluster-up.sh

cluster-down:
	@bash hack/k8s/down.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check agent sim tests bench dashboards
	$(VENV)/bin/mypy --strict agent sim/nodemedic_sim
	$(VENV)/bin/lint-imports

bench: system-deps $(STAMP)
	$(PY) bench/run_all.py

## deb: dist/nodemedic_<version>_<arch>.deb, self-contained (venv under /opt/nodemedic).
deb:
	bash packaging/build-deb.sh --out dist

## dist: dist/nodemedic-<version>-offline-py<X.Y>-<arch>.tar.gz (wheels + install.sh --offline).
dist:
	bash packaging/build-dist.sh --out dist

install:
	bash scripts/install.sh

uninstall:
	bash scripts/uninstall.sh

clean:
	rm -rf $(VENV) build dist .state *.egg-info sim/build sim/*.egg-info .mypy_cache .ruff_cache .pytest_cache

## kueue-build: build the Kueue manager pinned in hack/k8s/versions.env (KUEUE_VERSION) from its
## Go module, with its CRDs, into ~/.cache/nodemedic/k8s/kueue-<version> (see docs/real-k8s.md).
.PHONY: kueue-build kueue-up kueue-down
kueue-build:
	@bash hack/k8s/kueue-build.sh >/dev/null

## kueue-up / kueue-down: Kueue's CRDs and its manager (a local process) on the control plane of
## `make k8s-up`; its files in .k8s/kueue. k8s-down does not stop it: kueue-down first.
kueue-up: kueue-build
	@bash hack/k8s/kueue-up.sh >/dev/null

kueue-down:
	@bash hack/k8s/kueue-down.sh
