"""Long-budget fuzzing of every parser in tests/stress/stress_fuzz_targets.py: inputs tried,
crashes and hangs found, per target and per engine (hypothesis, atheris).

Run by `make bench` (bench/run_all.py) or directly: `python bench/fuzz.py [--examples 2000]
[--atheris-seconds 20] [--only NAME]`. Writes bench/results/fuzz.json and bench/results/fuzz.md.

Per target:
- hypothesis: ``--examples`` inputs from the structure-aware strategies of
  tests/stress/stress_fuzz_strategies.py, with out-of-range numbers and any YAML type allowed
  (the short CI suite keeps those out because they are known bugs, xfail-tested);
- atheris (libFuzzer, coverage-guided over agent/ code, seeded with the real captures):
  ``--atheris-seconds`` per target in a child process, ``-timeout=5`` so a hang is reported.
A crash is an exception outside the ones the parser's caller handles; crashes are grouped by
exception type and the innermost agent/ frame, with the first input that raised it. A hang is an
input taking more than 5 s. The CI suite (tests/stress) runs the same targets with 150 inputs.
Last, the whole stress suite (fault injection, hostile HTTP, floods) runs with
NODEMEDIC_STRESS_BUDGET=long and its outcome is recorded (``--no-suite`` skips it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STRESS = REPO / "tests" / "stress"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(STRESS))
RESULTS = REPO / "bench" / "results"
HANG_SECONDS = 5


def _module(name: str) -> Any:
    """tests/stress modules and atheris (optional) are found at run time, not by mypy."""
    return importlib.import_module(name)


def signature(exc: BaseException) -> str:
    """``TypeError at agent/settings.py:211``: the innermost frame inside agent/."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/agent/" in frame.filename:
            where = f"{frame.filename.split('/agent/', 1)[1]}:{frame.lineno}"
            where = f"agent/{where}"
    return f"{type(exc).__name__} at {where}"


class _Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise _Hang


def run_hypothesis(name: str, examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings

    for_target = _module("stress_fuzz_strategies").for_target
    targets = _module("stress_fuzz_targets")
    target = {t.name: t for t in (*targets.TARGETS, *targets.RAW_TARGETS)}[name]
    crashes: dict[str, dict[str, Any]] = {}
    stats = {"inputs": 0, "hangs": 0, "slowest_ms": 0.0}
    signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(for_target(target, wild_numbers=True))
    def fuzz(data: bytes) -> None:
        stats["inputs"] += 1
        start = time.perf_counter()
        signal.alarm(HANG_SECONDS)
        try:
            target.run(data)
        except target.allowed:
            pass
        except _Hang:
            stats["hangs"] += 1
        except Exception as exc:  # the point: record, keep going
            sig = signature(exc)
            entry = crashes.setdefault(sig, {"count": 0, "first_input": repr(data[:300])})
            entry["count"] += 1
        finally:
            signal.alarm(0)
            stats["slowest_ms"] = max(stats["slowest_ms"], (time.perf_counter() - start) * 1000)

    start = time.monotonic()
    fuzz()
    return {**stats, "seconds": round(time.monotonic() - start, 1), "crashes": crashes}


# ---- atheris child -----------------------------------------------------------------------------
def atheris_child(name: str, seconds: int, out: Path) -> None:
    atheris = _module("atheris")
    with atheris.instrument_imports(include=["agent"]):
        targets = _module("stress_fuzz_targets")
    target = {t.name: t for t in (*targets.TARGETS, *targets.RAW_TARGETS)}[name]
    seen: set[str] = set()

    def one(data: bytes) -> None:
        try:
            target.run(data)
        except target.allowed:
            pass
        except Exception as exc:
            sig = signature(exc)
            if sig not in seen:
                seen.add(sig)
                with out.open("a") as f:
                    f.write(json.dumps({"signature": sig, "first_input": repr(data[:300])}) + "\n")

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(target.seed_bytes()):
        (corpus / f"seed{i}").write_bytes(seed[:65536])
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-timeout={HANG_SECONDS}",
                   "-rss_limit_mb=1024", "-max_len=65536", str(corpus)], one)
    atheris.Fuzz()


def run_atheris(name: str, seconds: int) -> dict[str, Any]:
    try:
        _module("atheris")
    except ImportError:
        return {"skipped": "atheris not installed (pip install atheris)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "crashes.jsonl"
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__)), "--atheris-child", name, str(seconds),
             str(out)], capture_output=True, text=True, timeout=seconds + 300, check=False,
            env=dict(os.environ, PYTHONPATH=f"{REPO}:{STRESS}"),
        )
        runs = re.search(r"Done (\d+) runs", proc.stderr)
        execs = [int(m) for m in re.findall(r"^#(\d+)\s", proc.stderr, re.M)]
        crashes: dict[str, dict[str, Any]] = {}
        if out.exists():
            for line in out.read_text().splitlines():
                doc = json.loads(line)
                crashes[doc["signature"]] = {"count": None, "first_input": doc["first_input"]}
        hang = ("ALARM: working on the last Unit" in proc.stderr
                or "libFuzzer: timeout" in proc.stderr)
        return {
            "inputs": int(runs.group(1)) if runs else (max(execs) if execs else 0),
            "seconds": round(time.monotonic() - start, 1),
            "hangs": 1 if hang else 0,
            "crashes": crashes,
            "exit_code": proc.returncode,
            **({"stderr_tail": proc.stderr[-1500:]} if proc.returncode not in (0,) else {}),
        }


def run_suite() -> dict[str, Any]:
    """tests/stress with the long budget: pass/xfail/fail counts and how long it took."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(STRESS), "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, check=False,
        env=dict(os.environ, NODEMEDIC_STRESS_BUDGET="long"),
    )
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|xfailed|xpassed|error)",
                                               tail[0])}
    return {"exit_code": proc.returncode, "seconds": round(time.monotonic() - start, 1),
            "summary": tail[0], **counts}


def markdown(res: dict[str, Any]) -> str:
    rows = [
        "# Fuzzing: every parser that reads kubelet, procfs, netfilter, cgroup names or config",
        "",
        f"hypothesis: {res['examples']} structure-aware inputs per target (out-of-range numbers "
        f"and any YAML type allowed); atheris: {res['atheris_seconds']} s of coverage-guided "
        "fuzzing per target seeded with the real captures. A crash is an exception the parser's "
        f"caller does not handle; a hang is an input taking > {HANG_SECONDS} s. The rules loader "
        "and engine, cgroupfs value parsers, renderer and state annotation are fuzzed in their "
        "own unit tests (not repeated here). CI runs the same targets with 150 inputs each.",
        "",
        "| target | hypothesis inputs | atheris inputs | crashes (distinct) | hangs |",
        "|---|---|---|---|---|",
    ]
    total = {"h": 0, "a": 0}
    found: dict[str, str] = {}
    for name, r in res["targets"].items():
        h, a = r["hypothesis"], r["atheris"]
        total["h"] += h.get("inputs", 0)
        total["a"] += a.get("inputs", 0)
        sigs = sorted(set(h.get("crashes", {})) | set(a.get("crashes", {})))
        for s in sigs:
            found.setdefault(s, name)
        a_inputs = a.get("inputs", a.get("skipped", "—"))
        rows.append(f"| {name} | {h.get('inputs', 0)} | {a_inputs} | {len(sigs)} | "
                    f"{h.get('hangs', 0) + a.get('hangs', 0)} |")
    rows.append(f"| **total** | {total['h']} | {total['a']} | {len(found)} | |")
    suite = res.get("suite")
    if suite:
        rows += ["", f"Stress suite with the long budget (`NODEMEDIC_STRESS_BUDGET=long pytest "
                 f"tests/stress`): {suite['summary']} (exit {suite['exit_code']}). The xfails are "
                 "known bugs with owners, listed in docs/stress.md."]
    if found:
        rows += ["", "Crashes (each has an xfail test in tests/stress/test_fuzz_parsers.py "
                 "naming the fix):", ""]
        rows += [f"- `{sig}` ({target})" for sig, target in sorted(found.items())]
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--atheris-child":
        atheris_child(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    targets = _module("stress_fuzz_targets")
    names = [t.name for t in (*targets.TARGETS, *targets.RAW_TARGETS)]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--atheris-seconds", type=int, default=20)
    ap.add_argument("--only", action="append", choices=names, default=[])
    ap.add_argument("--no-suite", action="store_true",
                    help="skip the long-budget run of tests/stress")
    args = ap.parse_args()
    res: dict[str, Any] = {"examples": args.examples, "atheris_seconds": args.atheris_seconds,
                           "targets": {}}
    for name in args.only or names:
        print(f"== {name}", file=sys.stderr, flush=True)
        res["targets"][name] = {
            "hypothesis": run_hypothesis(name, args.examples),
            "atheris": run_atheris(name, args.atheris_seconds) if args.atheris_seconds > 0
            else {"skipped": "--atheris-seconds 0"},
        }
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "crashes"}
                          for k, v in res["targets"][name].items()}), file=sys.stderr)
    if not args.no_suite:
        print("== tests/stress (long budget)", file=sys.stderr, flush=True)
        res["suite"] = run_suite()
        print(res["suite"]["summary"], file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "fuzz.md").write_text(markdown(res) + "\n")
    print(markdown(res))
    return 0 if res.get("suite", {}).get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
