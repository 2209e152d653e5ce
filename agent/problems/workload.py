"""Workload, not node: find the pod behind an OOM kill or a hung task from its cgroup.

The kernel names the victim's memory cgroup in the line before the kill
(``oom-kill:constraint=...,oom_memcg=...,task_memcg=/kubepods/burstable/pod<UID>/<ctr>,task=x,
pid=N,uid=U``); a hung task (``INFO: task x:N blocked for more than S seconds.``) is still alive,
so its cgroup is read from /proc/N/cgroup. Both cgroup drivers are understood: cgroupfs
(``/kubepods/burstable/pod<uid>``) and systemd (``kubepods-burstable-pod<uid_with_underscores>
.slice``). A victim outside ``kubepods`` is a host process and stays a node problem.
"""

from __future__ import annotations

import re
from pathlib import Path

_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
OOM_KILL = re.compile(r"oom-kill:.*?\btask_memcg=([^,\s]+).*?,pid=(\d+)")
_KILLED_PID = re.compile(r"Killed process (\d+)")
_HUNG_PID = re.compile(r"task (.+):(\d+) blocked for more than")


def pod_uid(cgroup: str) -> str:
    """The pod UID in a cgroup path, '' when it is not a pod's (a host process)."""
    if "kubepods" not in cgroup:
        return ""
    m = _POD_UID.search(cgroup)
    return m.group(1).replace("_", "-") if m else ""


def victim_pid(kind: str, message: str) -> int | None:
    """The pid an OOM-kill or hung-task message is about."""
    m = (_KILLED_PID if kind == "oom" else _HUNG_PID).search(message)
    if m is None:
        return None
    return int(m.group(m.lastindex or 1))


def proc_cgroup(procfs: Path, pid: int) -> str:
    """The memory cgroup (v1) or unified cgroup (v2) of a live process; '' when unknown."""
    try:
        text = (procfs / str(pid) / "cgroup").read_text()
    except OSError:
        return ""
    unified = ""
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "memory" in controllers.split(","):
            return path
        if controllers == "":
            unified = path
    return unified
