"""The host collector on a captured procfs tree, on broken trees, and the real clock state."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.host import HostCollector, clock_state, parse_pressure, read_clock
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from tests.unprivileged import as_nobody

PROC = Path(__file__).resolve().parents[2] / "fixtures" / "proc"


@pytest.fixture(autouse=True)
def _restore_psutil_procfs() -> Iterator[None]:
    """The collector points psutil at the fixture tree; put it back for other tests."""
    saved = psutil.PROCFS_PATH
    try:
        yield
    finally:
        psutil.PROCFS_PATH = saved


@pytest.fixture
def proc_copy(tmp_path: Path) -> Path:
    """A writable copy of the procfs fixture tree, for tests that break files."""
    dst = tmp_path / "proc"
    shutil.copytree(PROC, dst)
    return dst


async def _collect(procfs: Path, disk_paths: tuple[str, ...] = ("/",)) -> tuple[
    HostCollector, dict[str, Family]
]:
    c = HostCollector(
        CollectorContext(settings_for_tests(path_procfs=procfs, host_disk_paths=disk_paths))
    )
    return c, {f.name: f for f in await c.collect()}


async def test_values_from_captured_procfs() -> None:
    """Load, memory, file handles, uptime and boot time equal the captured files' values."""
    _, f = await _collect(PROC)
    assert f["nodemedic_host_load1"].get() == 0.65
    assert f["nodemedic_host_load5"].get() == 0.28
    assert f["nodemedic_host_load15"].get() == 0.14
    assert f["nodemedic_host_memory_total_bytes"].get() == 24684084 * 1024
    assert f["nodemedic_host_memory_available_bytes"].get() == 24070484 * 1024
    assert f["nodemedic_host_swap_total_bytes"].get() == 0
    assert f["nodemedic_host_file_descriptors_allocated"].get() == 583
    assert f["nodemedic_host_file_descriptors_max"].get() == 2466170
    assert f["nodemedic_host_uptime_seconds"].get() == 1976.47
    assert f["nodemedic_host_boot_time_seconds"].get() == 1795509679
    # /proc/stat "cpu  11163 0 3706 379102 ..." in USER_HZ (100): user 111.63 s.
    assert f["nodemedic_host_cpu_seconds_total"].get(mode="user") == pytest.approx(111.63)
    assert f["nodemedic_host_cpu_seconds_total"].get(mode="idle") == pytest.approx(3791.02)
    assert f["nodemedic_host_read_errors_total"].samples == []


async def test_pressure_from_node_exporter_capture() -> None:
    """System-wide PSI: avg10 as a ratio and totals in seconds, irq with only a full line."""
    _, f = await _collect(PROC)
    avg = f["nodemedic_host_pressure_avg10_ratio"]
    total = f["nodemedic_host_pressure_seconds_total"]
    assert avg.get(resource="io", kind="some") == pytest.approx(0.0018)
    assert total.get(resource="io", kind="full") == pytest.approx(159.229614)
    assert total.get(resource="cpu", kind="some") == pytest.approx(14.036781)
    assert total.get(resource="irq", kind="full") == pytest.approx(0.008494)
    assert avg.get(resource="irq", kind="some") is None


async def test_missing_disk_paths_are_reported_not_failed(tmp_path: Path) -> None:
    """A watched path that does not exist shows present 0 and no filesystem numbers."""
    missing = str(tmp_path / "no-such-dir")
    c, f = await _collect(PROC, (str(tmp_path), missing))
    assert c.status()["missing_disk_paths"] == [missing]
    present = f["nodemedic_host_filesystem_present"]
    assert present.get(path=str(tmp_path)) == 1
    assert present.get(path=missing) == 0
    assert f["nodemedic_host_filesystem_size_bytes"].get(path=missing) is None
    avail = f["nodemedic_host_filesystem_avail_bytes"].get(path=str(tmp_path))
    assert avail is not None and avail > 0
    assert f["nodemedic_host_filesystem_files_free"].get(path=str(tmp_path)) is not None
    assert f["nodemedic_host_filesystem_readonly"].get(path=str(tmp_path)) == 0


async def test_filesystem_numbers_match_statvfs(tmp_path: Path) -> None:
    """Size and inode figures are those statvfs gives for the path."""
    _, f = await _collect(PROC, (str(tmp_path),))
    st = os.statvfs(tmp_path)
    assert f["nodemedic_host_filesystem_size_bytes"].get(path=str(tmp_path)) == (
        st.f_blocks * st.f_frsize
    )
    assert f["nodemedic_host_filesystem_files"].get(path=str(tmp_path)) == st.f_files


async def test_garbage_and_missing_files_are_skipped_and_counted(proc_copy: Path) -> None:
    """Garbage loadavg, an empty file-nr and no PSI: those metrics are absent and counted."""
    (proc_copy / "loadavg").write_text("garbage\n")
    (proc_copy / "sys/fs/file-nr").write_text("")
    (proc_copy / "pressure/io").write_text("some avg10=x\n")
    (proc_copy / "pressure" / "cpu").unlink(missing_ok=True)
    c, f = await _collect(proc_copy)
    assert "nodemedic_host_load1" not in f
    assert "nodemedic_host_file_descriptors_allocated" not in f
    assert f["nodemedic_host_memory_available_bytes"].get() == 24070484 * 1024
    errors = f["nodemedic_host_read_errors_total"]
    assert errors.get(source="loadavg") == 1
    assert errors.get(source="file_nr") == 1
    assert errors.get(source="pressure") == 1
    # A missing PSI file (kernel without PSI) is not an error; the others still report.
    assert f["nodemedic_host_pressure_avg10_ratio"].get(resource="cpu", kind="some") is None
    assert f["nodemedic_host_pressure_avg10_ratio"].get(resource="memory", kind="some") == 0
    assert any("loadavg" in src for src, _ in c.last_errors)


async def test_missing_procfs_root_fails_the_collector(tmp_path: Path) -> None:
    """A --path.procfs that does not exist fails the collector with the path in the message."""
    c = HostCollector(
        CollectorContext(settings_for_tests(path_procfs=tmp_path / "nope", host_disk_paths=()))
    )
    with pytest.raises(FileNotFoundError, match="nope"):
        await c.collect()


async def test_cpu_usage_ratio_on_second_tick() -> None:
    """CPU busy ratio appears from the second tick on, between 0 and 1 (real /proc)."""
    c = HostCollector(CollectorContext(settings_for_tests(host_disk_paths=())))
    first = {f.name for f in await c.collect()}
    assert "nodemedic_host_cpu_usage_ratio" not in first
    # Burn CPU until /proc/stat has advanced (10 ms ticks), so the two readings differ.
    start = sum(psutil.cpu_times())
    for _ in range(200):
        sum(i * i for i in range(50_000))
        if sum(psutil.cpu_times()) - start >= 0.05:
            break
    second = {f.name: f for f in await c.collect()}
    ratio = second["nodemedic_host_cpu_usage_ratio"].get()
    assert ratio is not None and 0.0 <= ratio <= 1.0


async def test_clock_fields_present_and_sane() -> None:
    """adjtimex on this machine: sync flag 0/1, error bounds non-negative, offset small."""
    _, f = await _collect(PROC)
    assert f["nodemedic_host_clock_synchronized"].get() in (0.0, 1.0)
    maxerr = f["nodemedic_host_clock_maxerror_seconds"].get()
    esterr = f["nodemedic_host_clock_esterror_seconds"].get()
    assert maxerr is not None and 0 <= maxerr <= 16.1  # the kernel caps maxerror at 16 s
    assert esterr is not None and esterr >= 0
    offset = f["nodemedic_host_clock_offset_seconds"].get()
    assert offset is not None and abs(offset) <= 0.5  # the kernel clamps offsets to +-0.5 s
    assert read_clock().synchronized == bool(f["nodemedic_host_clock_synchronized"].get())


def test_clock_reads_do_not_look_libc_up_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_library spawns ``ldconfig -p``: a tick must not pay for a process each time."""
    import ctypes.util

    real = ctypes.util.find_library
    calls: list[str] = []

    def counting(name: str) -> str | None:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", counting)
    for _ in range(3):
        read_clock()
    assert len(calls) <= 1, calls


def test_clock_state_interpretation() -> None:
    """STA_UNSYNC or TIME_ERROR mean unsynchronised; STA_NANO switches the offset to ns."""
    synced = clock_state(0, 0x0001, 1500, 20000, 300)  # TIME_OK, STA_PLL, offset 1500 us
    assert synced.synchronized is True
    assert synced.offset_seconds == pytest.approx(0.0015)
    assert synced.maxerror_seconds == pytest.approx(0.02)
    assert synced.esterror_seconds == pytest.approx(0.0003)
    assert clock_state(0, 0x0040, 0, 16_000_000, 16_000_000).synchronized is False  # STA_UNSYNC
    assert clock_state(5, 0x0001, 0, 0, 0).synchronized is False  # TIME_ERROR
    nano = clock_state(0, 0x2001, -250_000_000, 0, 0)  # STA_NANO: -0.25 s in ns
    assert nano.offset_seconds == pytest.approx(-0.25)


def test_parse_pressure_rejects_garbage() -> None:
    """A pressure file without some/full lines is an error, not zeros."""
    with pytest.raises(ValueError):
        parse_pressure("hello\n")
    assert parse_pressure("some avg10=12.50 avg60=0 avg300=0 total=2000000\n") == {
        "some": (0.125, 2.0)
    }


async def test_reload_back_to_default_procfs_repoints_psutil() -> None:
    """After a fixture --path.procfs, a collector built for /proc reads the real /proc again."""
    await _collect(PROC)
    assert str(PROC) == psutil.PROCFS_PATH
    _, f = await _collect(Path("/proc"))
    assert psutil.PROCFS_PATH == "/proc"
    real_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert f["nodemedic_host_memory_total_bytes"].get() == real_total


def _as_nobody(procfs: Path, disk_paths: tuple[str, ...]) -> dict[str, object]:
    """Collect as nobody, so file modes really apply."""
    def work() -> dict[str, object]:
        c, fams = asyncio.run(_collect(procfs, disk_paths))
        present = fams.get("nodemedic_host_filesystem_present")
        return {"unreadable": dict(c.unreadable()),
                "present": dict((lv[0], v) for lv, v in present.samples) if present else {},
                "mem": "nodemedic_host_memory_available_bytes" in fams}

    return as_nobody(work)  # type: ignore[no-any-return]


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory nobody can reach (pytest's tmp_path sits under a 0700 one)."""
    base = Path(tempfile.mkdtemp(prefix="nodemedic-host-"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base)


def test_sources_refused_to_us_are_missing_data_not_missing(world_tmp: Path) -> None:
    """EACCES on loadavg and on a watched path: those metrics are unreadable (permission) and
    the path gets no filesystem_present 0 (it is not known to be missing); the rest is read."""
    if os.geteuid() != 0:
        pytest.fail("needs root to drop to nobody (run the unit tests as root, as CI does)")
    tmp_path = world_tmp
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    for d in [proc, *proc.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    (proc / "loadavg").chmod(0)
    locked = tmp_path / "locked"
    (locked / "data").mkdir(parents=True)
    locked.chmod(0o700)  # nobody cannot traverse it: statvfs of locked/data is EACCES
    out = _as_nobody(proc, (str(locked / "data"), str(tmp_path)))
    unreadable = out["unreadable"]
    assert isinstance(unreadable, dict)
    assert unreadable["nodemedic_host_load1"] == "permission"
    assert unreadable["nodemedic_host_filesystem_present"] == "permission"
    assert "nodemedic_host_memory_available_bytes" not in unreadable
    assert out["mem"] is True
    assert out["present"] == {str(tmp_path): 1.0}  # no 0 claimed for the path refused to us
