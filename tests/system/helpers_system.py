"""The real-systemd tier's machinery: the cached Debian rootfs, the .deb, overlay roots and
systemd-nspawn containers (booted or one-shot), each cleaned up by its context manager.

Requirements are checked, never skipped: without root, debootstrap, systemd-nspawn or dpkg-deb
the tier fails saying what to install (`make test` installs them through system-deps).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nodemedic"
# nspawn's own seccomp filter blocks the clock query the host collector makes (adjtimex in
# read mode); --keep-unit with --register=no because the host may run no machined.
NSPAWN = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no",
          "--system-call-filter=adjtimex clock_adjtime", "--private-network"]
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
         "dpkg-deb": "dpkg", "nsenter": "util-linux", "strip": "binutils"}


def require_tools() -> None:
    """Fail (not skip) with the missing piece named."""
    assert os.geteuid() == 0, "the real-systemd tier needs root (debootstrap, mounts, nspawn)"
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]
    assert not missing, "missing for tests/system: " + ", ".join(missing)


def rootfs() -> Path:
    """The cached Debian 12 minbase rootfs with systemd (built on first use, ~1 min)."""
    res = subprocess.run([str(REPO / "tests/system/build_rootfs.sh")], capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, f"building the rootfs failed: {res.stderr[-3000:]}"
    return Path(res.stdout.strip().splitlines()[-1])


def _source_hash() -> str:
    h = hashlib.sha256()
    for top in ("agent", "packaging", "systemd", "rules", "pyproject.toml"):
        base = REPO / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def deb() -> Path:
    """`make deb`'s package for this source tree (cached per content hash, outside the tree);
    ``$NODEMEDIC_TEST_DEB`` names another one (e.g. a build of an older commit, to check that
    a test fails without a fix)."""
    if os.environ.get("NODEMEDIC_TEST_DEB"):
        return Path(os.environ["NODEMEDIC_TEST_DEB"])
    out = CACHE / f"deb-{_source_hash()}"
    found = sorted(out.glob("nodemedic_*.deb"))
    if found:
        return found[-1]
    # Other checkouts may be using theirs right now: only day-old packages are dropped.
    for old in CACHE.glob("deb-*"):
        if time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    partial = CACHE / f"{out.name}.{os.getpid()}"
    res = subprocess.run(["bash", str(REPO / "packaging/build-deb.sh"), "--out", str(partial)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"packaging/build-deb.sh failed: {res.stderr[-3000:]}"
    try:
        partial.rename(out)
    except OSError:  # built concurrently by another session: use theirs
        shutil.rmtree(partial, ignore_errors=True)
    return sorted(out.glob("nodemedic_*.deb"))[-1]


def repack(deb_path: Path, version: str, out: Path, edit: dict[str, str]) -> Path:
    """The same package under another version with some files' contents changed: an upgrade."""
    tree = out / "tree"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", str(deb_path), str(tree)], check=True, timeout=300)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    old = next(line for line in text.splitlines() if line.startswith("Version: "))
    control.write_text(text.replace(old, f"Version: {version}"))
    for rel, content in edit.items():
        (tree / rel).write_text(content)
    target = out / f"nodemedic_{version}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree),
                    str(target)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(tree)
    return target


@contextlib.contextmanager
def overlay(lower: Path, scratch: Path) -> Iterator[Path]:
    """A writable root over the cached rootfs; unmounted and deleted afterwards."""
    for d in ("upper", "work", "root"):
        (scratch / d).mkdir(parents=True)
    root = scratch / "root"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={scratch / 'upper'},workdir={scratch / 'work'}",
                    str(root)], check=True, timeout=60)
    try:
        yield root
    finally:
        if subprocess.run(["umount", str(root)], timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


def run_in(root: Path, *cmd: str, binds: tuple[str, ...] = (), timeout: float = 600
           ) -> subprocess.CompletedProcess[str]:
    """Run one command in a container of ``root`` (no boot, no network)."""
    args = [*NSPAWN, "-D", str(root), *(f"--bind-ro={b}" for b in binds), "--", *cmd]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


class Booted:
    """``systemd-nspawn --boot`` of a root; ``sh`` runs a command inside through nsenter."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log.open("w")
        self.proc = subprocess.Popen([*NSPAWN, "--boot", "-D", str(root)],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.pid = self._leader()
        self._wait_running()

    def _leader(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nspawn exited: {self.log.name}"
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for pid in kids.read_text().split() if kids.exists() else []:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.1)
        raise AssertionError("the container's systemd did not start")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + 120
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.3)
        raise AssertionError(f"container did not finish booting: {state}")

    def sh(self, script: str, *, check: bool = True, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "--",
             "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""},
        )
        if check:
            assert res.returncode == 0, f"{script!r} -> {res.returncode}: {res.stdout}{res.stderr}"
        return res

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's init to halt
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()


def wait_for(cond: object, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
