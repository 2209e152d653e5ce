"""tests/stress: fault injection, fuzzing and flood tests (see docs/stress.md).

bench/synthetic_node.py (which builds the cgroup trees the flood and vanishing tests use) is
imported as ``bench.synthetic_node``: pytest's ``pythonpath = ["."]`` puts the repository root on
sys.path, so no path is patched here."""
