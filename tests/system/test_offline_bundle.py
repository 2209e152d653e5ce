"""`make dist`'s offline bundle installs with no network: build it, unpack it, run its
`scripts/install.sh --offline` inside a fresh network namespace (no interface but a down
loopback) into a temporary root, and run the installed agent's check-rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from helpers_system import REPO

PYTHON = "/usr/bin/python3"


def test_bundle_installs_offline(tmp_path: Path) -> None:
    """The bundle holds the wheels and install.sh; `install.sh --offline` with no network
    yields a venv whose nodemedic validates the bundled rules; a wrong Python is refused."""
    assert shutil.which("unshare"), "util-linux unshare is required"
    assert os.geteuid() == 0, "needs root for a network namespace"
    res = subprocess.run(["bash", str(REPO / "packaging/build-dist.sh"), "--out",
                          str(tmp_path / "dist")], capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = Path(res.stdout.strip().splitlines()[-1])
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (top,) = (tmp_path / "x").iterdir()
    assert any(top.glob("wheels/nodemedic-*.whl")) and (top / "scripts/install.sh").exists()
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "NODEMEDIC_PIP_ARGS")}
    env["PIP_CONFIG_FILE"] = "/dev/null"
    install = ["unshare", "--net", "bash", str(top / "scripts/install.sh"), "--offline",
               "--root", str(root), "--python", PYTHON]
    res = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    rules = root / "etc/nodemedic/rules"
    out = subprocess.run([str(root / "opt/nodemedic/venv/bin/nodemedic"), "check-rules",
                          str(rules)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
    assert (root / "etc/systemd/system/nodemedic.service").exists()

    (top / "wheels/PYTHON_VERSION").write_text("3.99\n")
    res = subprocess.run([*install[:-4], "--root", str(tmp_path / "r2"), "--python", PYTHON],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0 and "Python 3.99" in res.stderr
