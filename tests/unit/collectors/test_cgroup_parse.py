"""cgroup control-file parsers and kubepods name/layout detection (agent.collectors.cgroupfs)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collectors.cgroupfs.layout import container_id, detect, pod_uid
from agent.collectors.cgroupfs.parse import (
    ParseError,
    parse_int,
    parse_keyed,
    parse_psi,
    parse_v1_cfs_quota,
    parse_v1_memory_limit,
    parse_v2_cpu_max,
    parse_v2_max,
)
from agent.collectors.cgroupfs.read import WATCHED_FILES

CAP = Path(__file__).resolve().parents[2] / "fixtures" / "cgroup" / "captures"


def test_v1_unlimited_memory_limit_is_none() -> None:
    """The v1 'no limit' page-counter maximum (4 KiB and 64 KiB pages) is not a limit."""
    assert parse_v1_memory_limit((CAP / "v1_docker_container_cpu_throttled" /
                                  "memory.limit_in_bytes").read_bytes()) is None
    assert parse_v1_memory_limit(b"9223372036854710272\n") is None
    assert parse_v1_memory_limit(b"2147483648\n") == 2147483648


def test_v2_max_is_none_and_numbers_pass() -> None:
    """memory.max 'max' means unlimited; a number is bytes."""
    assert parse_v2_max((CAP / "v2_user_session_scope" / "memory.max").read_bytes()) is None
    assert parse_v2_max(b"268435456\n") == 268435456


def test_cpu_quota_in_cores() -> None:
    """Quota/period become cores; -1 (v1) and 'max' (v2) mean unlimited."""
    assert parse_v1_cfs_quota(b"10000\n", b"100000\n") == pytest.approx(0.1)
    assert parse_v1_cfs_quota(b"-1\n", b"100000\n") is None
    assert parse_v2_cpu_max(b"8000 100000\n") == pytest.approx(0.08)
    assert parse_v2_cpu_max((CAP / "v2_user_session_scope" / "cpu.max").read_bytes()) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda: parse_int(b""),
        lambda: parse_int(b"garbage\n"),
        lambda: parse_int(b"-5\n"),
        lambda: parse_v2_max(b"\n"),
        lambda: parse_v2_cpu_max(b"max\n"),
        lambda: parse_v2_cpu_max(b"0 100000\n"),
        lambda: parse_v1_cfs_quota(b"abc", b"100000"),
        lambda: parse_v1_cfs_quota(b"10000", b"0"),
        lambda: parse_psi(b""),
        lambda: parse_psi(b"some avg10=oops avg60=0.00 avg300=0.00 total=1\n"),
        lambda: parse_psi(b"some avg10=250.00 avg60=0.00 avg300=0.00 total=1\n"),
        lambda: parse_keyed(b"nr_periods x\n", (b"nr_periods",)),
    ],
)
def test_garbage_raises_parse_error(call: object) -> None:
    """Empty, garbage or out-of-range content is rejected, never turned into a number."""
    with pytest.raises(ParseError):
        call()  # type: ignore[operator]


def test_keyed_matches_whole_keys_only() -> None:
    """'inactive_file' is not read from 'total_inactive_file', nor 'file' from 'file_mapped'."""
    v1 = (CAP / "v1_eks_amzn2_kubepods_burstable_container" / "memory.stat").read_bytes()
    assert parse_keyed(v1, (b"total_inactive_file", b"inactive_file")) == {
        b"total_inactive_file": 78557184,
        b"inactive_file": 78557184,
    }
    v2 = (CAP / "v2_user_session_scope" / "memory.stat").read_bytes()
    assert parse_keyed(v2, (b"anon", b"file", b"inactive_file")) == {
        b"anon": 1411100672,
        b"file": 8621432832,
        b"inactive_file": 6685749248,
    }
    assert parse_keyed(v2, (b"no_such_key",)) == {}


def test_psi_real_capture() -> None:
    """PSI avg10 becomes a 0..1 ratio and total microseconds become seconds."""
    data = (CAP / "v2_user_session_scope" / "cpu.pressure").read_bytes()
    assert parse_psi(data) == [("some", 0.0, 115.056064), ("full", 0.0, 29.25418)]
    assert parse_psi(b"some avg10=12.50 avg60=1.00 avg300=0.10 total=5000000\n") == [
        ("some", 0.125, 5.0)
    ]


@given(st.binary(max_size=200))
def test_parsers_only_ever_raise_parse_error(data: bytes) -> None:
    """Any bytes at all give a value or ParseError: bad files cannot crash the collector."""
    for fn in (parse_int, parse_v1_memory_limit, parse_v2_max, parse_v2_cpu_max, parse_psi):
        with contextlib.suppress(ParseError):
            fn(data)
    with contextlib.suppress(ParseError):
        parse_keyed(data, (b"oom_kill", b"inactive_file"))
    with contextlib.suppress(ParseError):
        parse_v1_cfs_quota(data, data)


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("kubepods-burstable-pod7a96c459_d529_44ae_9f99_90d3798d6426.slice",
         "7a96c459-d529-44ae-9f99-90d3798d6426"),
        ("kubepods-pod22949dce_fd8b_11ea_8ede_98f2b32c645c.slice",
         "22949dce-fd8b-11ea-8ede-98f2b32c645c"),
        ("pod74c13223-5a00-11e9-b385-42010a80018d", "74c13223-5a00-11e9-b385-42010a80018d"),
        ("pod8ac8c3a9ee4d182b8d934f20e971ada7", "8ac8c3a9ee4d182b8d934f20e971ada7"),
        ("kubepods-burstable.slice", None),
        ("system.slice", None),
        ("podnot-a-uid!", None),
        ("pod", None),
    ],
)
def test_pod_uid_from_directory_names(name: str, uid: str | None) -> None:
    """Both drivers' pod directory names give the pod UID; anything else is not a pod."""
    assert pod_uid(name) == uid


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("cri-containerd-1d3d308a7d48.scope", "1d3d308a7d48"),
        ("docker-b15a5bdedd2e.scope", "b15a5bdedd2e"),
        ("crio-7fe41c8a2d1d.scope", "7fe41c8a2d1d"),
        ("34dc0b5e626f2c5c4c5170e3", "34dc0b5e626f2c5c4c5170e3"),
        ("crio-conmon-7fe41c8a2d1d.scope", None),
        ("weird name", None),
    ],
)
def test_container_id_from_directory_names(name: str, cid: str | None) -> None:
    """Runtime prefixes and .scope are stripped; cri-o's conmon scope is not a container."""
    assert container_id(name) == cid


def _mk(root: Path, *dirs: str) -> None:
    for d in dirs:
        (root / d).mkdir(parents=True)


def test_detect_modes(tmp_path: Path) -> None:
    """v2 at the root, v1 joined or separate cpu/cpuacct, hybrid, unified-only, and nothing."""
    v2 = tmp_path / "v2"
    _mk(v2, "")
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    assert detect(str(v2), WATCHED_FILES).mode == "v2"

    v1 = tmp_path / "v1"
    _mk(v1, "memory", "cpu,cpuacct")
    os.symlink("cpu,cpuacct", v1 / "cpu")
    os.symlink("cpu,cpuacct", v1 / "cpuacct")
    layout = detect(str(v1), WATCHED_FILES)
    assert layout.mode == "v1"
    assert [h.roles for h in layout.hierarchies] == [("memory",), ("cpu", "cpuacct")]

    hybrid = tmp_path / "hybrid"
    _mk(hybrid, "memory", "cpu", "cpuacct", "unified")
    (hybrid / "unified" / "cgroup.controllers").write_text("")
    layout = detect(str(hybrid), WATCHED_FILES)
    assert layout.mode == "hybrid"
    assert [h.roles for h in layout.hierarchies] == [
        ("memory",), ("cpu",), ("cpuacct",), ("v2",)
    ]

    unified_only = tmp_path / "unified_only"
    _mk(unified_only, "unified")
    (unified_only / "unified" / "cgroup.controllers").write_text("")
    assert detect(str(unified_only), WATCHED_FILES).mode == "v2"

    assert detect(str(tmp_path / "empty"), WATCHED_FILES).mode == "none"
