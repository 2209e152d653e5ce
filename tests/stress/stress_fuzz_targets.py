"""Fuzz targets for the parsers no unit test fuzzes yet, shared by tests/stress and bench/fuzz.py.

Each target takes raw bytes (so hypothesis and atheris drive it the same way), feeds them to one
parser the way its caller does, and lists the exceptions that caller catches and reports; any
other exception is a crash (it would fail the whole collector, or worse). Seeds are the real
captures under tests/fixtures/, for mutation-based fuzzing.

Already fuzzed elsewhere (not repeated here): the rules loader and engine
(tests/unit/rules/test_rules_fuzz.py), cgroupfs/parse.py value parsers
(tests/unit/collectors/test_cgroup_parse.py), the exposition renderer
(tests/unit/exporter/test_render.py) and the state annotation (tests/unit/safety/).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.collectors.cgroupfs.layout import container_id, pod_uid
from agent.collectors.host import parse_pressure
from agent.collectors.kubelet import parse_pleg, summary_families
from agent.collectors.kubelet_summary import decode_summary
from agent.kubelet_client import KubeletBadBody, KubeletError, _check_healthz, _decode_pods
from agent.netstate.conntrack import aggregate_text
from agent.netstate.iptables import parse_iptables_save
from agent.netstate.ipvs import parse_ip_vs, parse_ip_vs_stats
from agent.settings import SettingsError, load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass(frozen=True)
class Target:
    """One parser under fuzz: ``run(data)``; exceptions in ``allowed`` are reported errors."""

    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    kind: str  # "json", "text" or "yaml": which structured hypothesis strategy fits
    seeds: tuple[str, ...] = field(default=())  # fixture paths relative to tests/fixtures

    def seed_bytes(self) -> list[bytes]:
        return [(FIXTURES / s).read_bytes() for s in self.seeds]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _summary(data: bytes) -> object:
    try:
        doc = decode_summary(data)  # the collector's own decode (trimmed, json.loads fallback)
    except KubeletBadBody:
        return None  # the client reports the body as bad
    return summary_families(doc)


def _settings_file(data: bytes, *, utf8: bool = True) -> object:
    # The config file is YAML; load_settings reads it from a path like --config does. Bytes
    # that are not UTF-8 are a known crash (tests/stress/test_fuzz_parsers.py xfail), so the
    # shared target re-encodes them; bench/fuzz.py also runs the raw variant.
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml") as f:
        f.write(_text(data).encode() if utf8 else data)
        f.flush()
        return load_settings(None, environ={"NODEMEDIC_CONFIG": f.name},
                             collector_names=("cgroup", "kubelet", "host", "lbskew"))


def _layout_names(data: bytes) -> object:
    name = _text(data)
    return pod_uid(name), container_id(name)


def _conntrack(data: bytes) -> object:
    text = _text(data)
    return aggregate_text([text[: len(text) // 2], text[len(text) // 2 :]], max_keys=64)


TARGETS: tuple[Target, ...] = (
    # agent/kubelet_client.py: the collector reports KubeletError/ValueError per endpoint.
    Target("kubelet_pods", _decode_pods, (KubeletError,), "json",
           ("kubelet/pods_minikube_v1.35.json",)),
    Target("kubelet_stats_summary", _summary, (ValueError,), "json",
           ("kubelet/stats_summary_minikube_v1.35.json",)),
    Target("kubelet_pleg_metrics", lambda d: parse_pleg(_text(d)), (ValueError,), "text",
           ("kubelet/metrics_kubelet_eks_v1.21_subset.txt",)),
    Target("kubelet_healthz", _check_healthz, (KubeletError,), "text",
           ("kubelet/healthz_verbose_ok_k8s_docs.txt",)),
    # agent/collectors/host.py:285 catches OSError, ValueError, KeyError around parse_pressure.
    Target("host_pressure", lambda d: parse_pressure(_text(d)), (ValueError, KeyError), "text",
           ("proc/pressure/cpu", "proc/pressure/memory", "proc/pressure/io")),
    # agent/collectors/cgroupfs/layout.py: directory names straight from the filesystem.
    Target("cgroup_dir_names", _layout_names, (), "text", ()),
    # agent/collectors/lbskew.py calls these with no exception handling around the parse.
    Target("iptables_save", lambda d: parse_iptables_save(_text(d).splitlines()), (), "text",
           ("net/iptables_save_t_nat_aks_node_2022_extracted.txt",
            "net/lab_kubeproxy_like_iptables_save_nat.txt")),
    Target("ipvs_table", lambda d: (parse_ip_vs(_text(d).splitlines()),
                                    parse_ip_vs_stats(_text(d))), (), "text",
           ("net/proc_net/ip_vs", "net/proc_net/ip_vs_stats",
            "net/ipvsadm_ln_kube_router_node.txt")),
    Target("conntrack", _conntrack, (), "text",
           ("net/lab_kubeproxy_like_proc_net_nf_conntrack.txt",
            "net/conntrack_L_fedora_magazine.txt")),
    # agent/settings.py: --config FILE; anything wrong must be a SettingsError with a message.
    Target("settings_config_file", _settings_file, (SettingsError,), "yaml", ()),
)
# Long-budget only (bench/fuzz.py): inputs outside what the short suite asserts on.
RAW_TARGETS: tuple[Target, ...] = (
    Target("settings_config_file_any_yaml", lambda d: _settings_file(d, utf8=False),
           (SettingsError,), "yaml", ()),
)
BY_NAME = {t.name: t for t in TARGETS}
