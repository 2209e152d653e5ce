"""tests/stress: fault injection, fuzzing and flood tests (see docs/stress.md).

Makes bench/ importable (bench/synthetic_node.py builds the cgroup trees the flood and vanishing
tests use) and loads the in-memory API server fixtures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
