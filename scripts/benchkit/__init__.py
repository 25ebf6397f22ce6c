"""Parts of `scripts/bench.py`: workload, image server, the three contenders, memory, report."""
