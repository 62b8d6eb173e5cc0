"""tide.bench: the benchmark suite (whole-model throughput in e2e.py)."""
