"""The KUBE-* iptables chains a real node adds to the host's network namespace, and their removal.

The kubelet creates KUBE-FIREWALL, KUBE-KUBELET-CANARY and KUBE-IPTABLES-HINT (with jumps from
INPUT/OUTPUT); kube-proxy (iptables mode) KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* and more, and
`kube-proxy --cleanup` removes only its own. node-up.sh records the chains present before it
starts anything; node-down.sh removes every KUBE-* chain that was not, with the rules in other
chains that jump to it, through ``iptables-restore --noflush`` (the rules copied verbatim from
``iptables-save``, so their quoting survives), for IPv4 and IPv6.

Usage: kube_chains.py snapshot FILE | kube_chains.py remove-new FILE
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

FAMILIES = (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore"))
TABLES = ("filter", "nat", "mangle")


def chains(save: str, table: str) -> dict[str, list[str]]:
    """KUBE-* chains of ``table`` -> the -A lines (anywhere) that jump to them."""
    text = run([save, "-t", table])
    names = [line[1:].split()[0] for line in text.splitlines()
             if line.startswith(":KUBE-")]
    jumps: dict[str, list[str]] = {n: [] for n in names}
    for line in text.splitlines():
        if not line.startswith("-A "):
            continue
        parts = line.split()
        for flag in ("-j", "-g"):
            if flag in parts:
                target = parts[parts.index(flag) + 1]
                if target in jumps:
                    jumps[target].append(line)
    return jumps


def run(argv: list[str], stdin: str | None = None) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                         check=False)
    return out.stdout if out.returncode == 0 else ""


def snapshot() -> dict[str, list[str]]:
    return {f"{save}/{t}": sorted(chains(save, t)) for save, _ in FAMILIES for t in TABLES}


def remove_new(before: dict[str, list[str]]) -> list[str]:
    removed = []
    for save, restore in FAMILIES:
        for t in TABLES:
            old = set(before.get(f"{save}/{t}", []))
            found = chains(save, t)
            new = [c for c in found if c not in old]
            if not new:
                continue
            lines = [f"*{t}"]
            # Jumps from chains that stay; rules inside removed chains go with -F.
            for c in new:
                for rule in found[c]:
                    if rule.split()[1] not in new:
                        lines.append("-D" + rule[2:])
            lines += [f"-F {c}" for c in new] + [f"-X {c}" for c in new] + ["COMMIT", ""]
            subprocess.run([restore, "--noflush"], input="\n".join(lines), text=True,
                           capture_output=True, timeout=60, check=False)
            removed += [f"{save.split('-')[0]} {t} {c}" for c in new
                        if c not in chains(save, t)]
    return removed


def main() -> int:
    cmd, path = sys.argv[1:3]
    if cmd == "snapshot":
        with open(path, "w") as f:
            json.dump(snapshot(), f)
        return 0
    with open(path) as f:
        before = json.load(f)
    for line in remove_new(before):
        print(f"removed {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
