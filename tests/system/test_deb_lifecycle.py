"""The .deb with real dpkg in a Debian 12 container with no network: install, upgrade keeping
an operator's changed conffiles, remove keeping the configuration, purge removing it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from helpers_system import REPO, deb, overlay, repack, require_tools, rootfs, run_in


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_offline_install_upgrade_remove_purge(tmp_path: Path) -> None:
    """dpkg -i offline works and the agent runs; an upgrade keeps the operator's edits (and puts
    a changed default next to them as .dpkg-dist); -r keeps /etc/nodemedic; --purge removes it
    and /var/lib/nodemedic."""
    require_tools()
    package = deb()
    new_config = (Path(__file__).resolve().parents[2] / "systemd/config.yaml").read_text()
    upgrade = repack(package, "99.0.0", tmp_path / "up",
                     {"etc/nodemedic/config.yaml": new_config + "# new default\n"})
    with overlay(rootfs(), tmp_path / "ovl") as root:
        binds = (f"{package}:/tmp/old.deb", f"{upgrade}:/tmp/new.deb")
        ok(run_in(root, "dpkg", "-i", "/tmp/old.deb", binds=binds))
        out = ok(run_in(root, "/opt/nodemedic/venv/bin/nodemedic", "check-rules",
                        "/etc/nodemedic/rules"))
        assert "OK" in out
        # enabled (starts at the next boot), not started: see the booted tier
        assert (root / "etc/systemd/system/multi-user.target.wants/nodemedic.service").is_symlink()
        assert (root / "var/lib/nodemedic").is_dir()

        env = root / "etc/nodemedic/nodemedic.env"
        env.write_text(env.read_text() + "# operator edit\n")
        config = root / "etc/nodemedic/config.yaml"
        config.write_text(config.read_text() + "# operator edit\n")
        (root / "etc/nodemedic/kubeconfig").write_text("operator credentials\n")
        (root / "var/lib/nodemedic/state.json").write_text("{}")
        ok(run_in(root, "dpkg", "-i", "--force-confdef", "--force-confold", "/tmp/new.deb",
                  binds=binds))
        assert "99.0.0" in ok(run_in(root, "dpkg-query", "-W", "nodemedic"))
        assert env.read_text().endswith("# operator edit\n")  # unchanged upstream: kept
        assert config.read_text().endswith("# operator edit\n")  # both changed: ours kept
        assert (root / "etc/nodemedic/config.yaml.dpkg-dist").read_text().endswith(
            "# new default\n")

        ok(run_in(root, "dpkg", "-r", "nodemedic"))
        assert not (root / "opt/nodemedic").exists()
        assert config.exists() and env.exists() and (root / "etc/nodemedic/kubeconfig").exists()
        status = ok(run_in(root, "dpkg-query", "-W", "-f", "${Status}", "nodemedic"))
        assert status == "deinstall ok config-files"

        ok(run_in(root, "dpkg", "--purge", "nodemedic"))
        assert not (root / "etc/nodemedic").exists()
        assert not (root / "var/lib/nodemedic").exists()
        assert not (root / "etc/systemd/system/multi-user.target.wants/nodemedic.service"
                    ).exists()


def test_lintian_reports_nothing_beyond_the_explained_overrides() -> None:
    """lintian prints no error or warning; what is overridden is explained in the overrides
    file and docs/install.md."""
    assert shutil.which("lintian"), "lintian is missing (apt-get install lintian)"
    res = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb())],
                         capture_output=True, text=True, timeout=900)
    tags = [line for line in (res.stdout + res.stderr).splitlines()
            if line[:2] in ("E:", "W:")]
    assert tags == [], "\n".join(tags)
    overrides = (REPO / "packaging/debian/lintian-overrides").read_text()
    docs = (REPO / "docs/install.md").read_text()
    for line in overrides.splitlines():
        if line.startswith("nodemedic: "):
            assert f"`{line.split()[1]}" in docs, f"{line.split()[1]} is not explained in docs"
