"""The shipped .deb under real systemd: a Debian 12 container booted with systemd-nspawn, no
network, the package installed inside it, a stand-in kubelet.service that counts its starts.

The tests share one booted container and run in file order (each builds on the last): install,
start, watchdog, a remediation through real systemctl, crash loops, reload, the sandbox score,
the journal, stop.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_system import Booted, deb, overlay, repack, require_tools, rootfs, wait_for

CONFIG = """\
collect.interval: 1s
collector.timeout: 0.5s
kubelet.url: http://127.0.0.1:9
node-name: system-test
web.listen-address: 127.0.0.1:9678
rules.dir: /etc/nodemedic/test-rules
"""
RULE = """\
rules:
  - name: kubelet-restart-loop
    description: Restart the kubelet when its health endpoint fails.
    severity: critical
    when:
      metric: nodemedic_kubelet_up
      op: "=="
      value: 0
    cooldown: 10m
    actions:
      - type: restart-service
        unit: kubelet.service
"""
EXTRA_RULE = """\
rules:
  - name: added-by-reload
    description: Fires at once in dry-run (shown in /status); proves that a reload loaded it.
    severity: info
    dry_run: true
    when:
      metric: nodemedic_kubelet_up
      op: "=="
      value: 0
    actions:
      - type: restart-service
        unit: kubelet.service
"""
# Stand-in kubelet: a long sleep that appends a line per start.
KUBELET = """\
[Unit]
Description=stand-in kubelet for the nodemedic system tests
[Service]
ExecStartPre=/bin/sh -c 'echo start >> /var/lib/kubelet-starts'
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""
# Short watchdog and restart delay to keep the test fast; room for the deliberate crash loop.
DROPIN = """\
[Unit]
StartLimitBurst=50
[Service]
WatchdogSec=3s
RestartSec=1s
"""
EXPOSURE_THRESHOLD = 3.0


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    require_tools()
    package = deb()
    scratch = tmp_path_factory.mktemp("nspawn")
    with overlay(rootfs(), scratch / "ovl") as root:
        shutil.copy(package, root / "root/nodemedic.deb")
        (root / "etc/systemd/system/kubelet.service").write_text(KUBELET)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "kubelet.service").symlink_to("/etc/systemd/system/kubelet.service")
        booted = Booted(root, scratch / "console.log")
        try:
            yield booted
        finally:
            booted.close()


def kubelet_starts(box: Booted) -> int:
    path = box.root / "var/lib/kubelet-starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def journal(box: Booted) -> list[dict[str, str]]:
    out = box.sh("journalctl -u nodemedic.service -o json --no-pager").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def decisions(box: Booted) -> list[dict[str, object]]:
    out = []
    for entry in journal(box):
        try:
            doc = json.loads(entry.get("MESSAGE", ""))
        except (ValueError, TypeError):
            continue
        if isinstance(doc, dict) and doc.get("event") == "remediation_decision":
            out.append(doc)
    return out


def running(box: Booted) -> dict[str, str]:
    return box.show("nodemedic.service", "ActiveState", "SubState", "MainPID", "NRestarts",
                    "StatusText")


def wait_restarted(box: Booted, old_pid: str, what: str) -> None:
    def done() -> bool:
        now = running(box)
        return now["MainPID"] not in ("0", old_pid) and now["SubState"] == "running"

    wait_for(done, 60, what)


def test_first_install_enables_but_does_not_start(box: Booted) -> None:
    """dpkg -i with no network: the unit is enabled for the next boot but not started."""
    box.sh("dpkg -i /root/nodemedic.deb", timeout=600)
    assert box.sh("systemctl is-enabled nodemedic.service").stdout.strip() == "enabled"
    assert box.sh("systemctl is-active nodemedic.service", check=False).stdout.strip() == (
        "inactive"
    )
    assert kubelet_starts(box) == 1


def test_configured_service_reaches_running_with_status_text(box: Booted) -> None:
    """Type=notify: active (running) only after READY=1, with the agent's STATUS= text."""
    etc = box.root / "etc/nodemedic"
    (etc / "system-test.yaml").write_text(CONFIG)
    (etc / "test-rules").mkdir()
    (etc / "test-rules/loop.yaml").write_text(RULE)
    (etc / "nodemedic.env").write_text("NODEMEDIC_ARGS=--config /etc/nodemedic/system-test.yaml\n")
    dropin = box.root / "etc/systemd/system/nodemedic.service.d"
    dropin.mkdir(parents=True)
    (dropin / "test.conf").write_text(DROPIN)
    box.sh("systemctl daemon-reload && systemctl start nodemedic.service", timeout=120)
    state = running(box)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["StatusText"], state
    # The unit's environment reaches the agent: one malloc arena (less RSS, see the unit).
    environ = box.sh(f"cat /proc/{state['MainPID']}/environ").stdout.split("\0")
    assert "MALLOC_ARENA_MAX=1" in environ, environ


def test_watchdog_pings_arrive(box: Booted) -> None:
    """systemd's last-ping timestamp keeps moving (WATCHDOG=1 once per 1 s tick)."""
    def stamp() -> str:
        return box.show("nodemedic.service", "WatchdogTimestampMonotonic")[
            "WatchdogTimestampMonotonic"]

    first = stamp()
    wait_for(lambda: stamp() != first, 10, "a newer watchdog ping")


def test_restart_service_restarts_the_kubelet_through_systemd(box: Booted) -> None:
    """kubelet_up == 0 -> `systemctl restart kubelet.service` really restarts the unit; the
    outcome is in the journal and in the local state file."""
    wait_for(lambda: kubelet_starts(box) >= 2, 60, "the kubelet restart")
    done = [d for d in decisions(box) if d.get("action") == "restart-service"]
    assert done and done[0]["decision"] == "allowed" and done[0]["outcome"] == "success", done
    state = json.loads((box.root / "var/lib/nodemedic/state.json").read_text())
    assert any(key.startswith("kubelet-restart-loop|restart-service") for key in
               state["ledger"]["l"])


def test_crash_looping_agent_does_not_restart_the_kubelet_again(box: Booted) -> None:
    """SIGKILL the agent three times (systemd restarts it each time, no API): the kubelet is
    not restarted again inside the rule's cooldown."""
    for _ in range(3):
        pid = running(box)["MainPID"]
        box.sh("systemctl kill -s KILL nodemedic.service")
        wait_restarted(box, pid, "systemd's restart")
        time.sleep(2.5)  # a couple of ticks with the rule firing
    assert kubelet_starts(box) == 2
    assert int(running(box)["NRestarts"]) >= 3


def test_sigstopped_agent_is_killed_by_the_watchdog_and_restarted(box: Booted) -> None:
    """A stopped process sends no pings: WatchdogSec=3s kills it and Restart= brings it back."""
    before = running(box)
    box.sh("systemctl kill -s STOP nodemedic.service")
    wait_restarted(box, before["MainPID"], "the watchdog restart")
    assert int(running(box)["NRestarts"]) > int(before["NRestarts"])
    log = box.sh("journalctl -u nodemedic.service --no-pager").stdout
    assert "Watchdog timeout" in log
    assert kubelet_starts(box) == 2


def status_body(box: Booted) -> str:
    return box.sh("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                  "'http://127.0.0.1:9678/status', timeout=5).read().decode())\"").stdout


def test_systemctl_reload_applies_new_rules(box: Booted) -> None:
    """A rule file added, `systemctl reload`: the running agent (same PID) has the new rule."""
    pid = running(box)["MainPID"]
    assert "added-by-reload" not in status_body(box)
    (box.root / "etc/nodemedic/test-rules/extra.yaml").write_text(EXTRA_RULE)
    box.sh("systemctl reload nodemedic.service")
    wait_for(lambda: "added-by-reload" in status_body(box), 30, "the reloaded rule")
    assert running(box)["MainPID"] == pid


def test_security_exposure_on_the_running_system(box: Booted) -> None:
    """`systemd-analyze security` of the installed unit (with the system's real state)."""
    out = box.sh("systemd-analyze security --no-pager nodemedic.service").stdout
    match = re.search(r"Overall exposure level for nodemedic\.service: ([0-9.]+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) <= EXPOSURE_THRESHOLD, out


def test_journal_has_identifier_and_priority_by_level(box: Booted) -> None:
    """Entries carry SYSLOG_IDENTIFIER=nodemedic and PRIORITY from the log level."""
    seen: dict[str, set[str]] = {}
    for entry in journal(box):
        try:
            doc = json.loads(entry.get("MESSAGE", ""))
        except (ValueError, TypeError):
            continue
        if isinstance(doc, dict) and "level" in doc:
            assert entry.get("SYSLOG_IDENTIFIER") == "nodemedic", entry
            seen.setdefault(str(doc["level"]), set()).add(entry["PRIORITY"])
    assert seen.get("info") == {"6"}, seen
    assert seen.get("warning") == {"4"}, seen


def test_stop_is_clean_within_timeout(box: Booted) -> None:
    """`systemctl stop` returns well within TimeoutStopSec with a clean exit."""
    start = time.monotonic()
    box.sh("systemctl stop nodemedic.service", timeout=60)
    took = time.monotonic() - start
    props = box.show("nodemedic.service", "ActiveState", "Result", "ExecMainStatus",
                     "TimeoutStopUSec")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
    assert props["ExecMainStatus"] == "0", props
    assert took < 30, took
    assert kubelet_starts(box) == 2
    assert Path(box.root / "var/lib/nodemedic/state.json").exists()


def test_upgrade_restarts_the_service_only_if_it_was_running(
    box: Booted, tmp_path: Path
) -> None:
    """postinst try-restart: a stopped service stays stopped across an upgrade; a running one
    is restarted with the new code (new MainPID)."""
    upgrade = repack(deb(), "99.0.0", tmp_path, {})
    shutil.copy(upgrade, box.root / "root/upgrade.deb")
    box.sh("dpkg -i /root/upgrade.deb", timeout=600)
    assert running(box)["ActiveState"] == "inactive"
    box.sh("systemctl start nodemedic.service", timeout=120)
    pid = running(box)["MainPID"]
    box.sh("dpkg -i /root/upgrade.deb", timeout=600)
    wait_restarted(box, pid, "the restart after the upgrade")
    assert box.sh("systemctl is-enabled nodemedic.service").stdout.strip() == "enabled"
