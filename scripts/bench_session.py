"""Interactive latency: the first and the later `score_pairs` calls of one process.

    python scripts/bench_session.py                        # tiny and vit-b-32, 1 / 4 / 64 / 1,000 pairs
    python scripts/bench_session.py --arch tiny --pairs 4  # one cell

Each (model, pairs) cell runs in a fresh process, so its first call pays what a
notebook's first call pays: Ray's start, the warm actor's start and the model load.
Then, in the same process: the later calls as `score_pairs` makes them (warm actor
up to `session.DIRECT_MAX_PAIRS` pairs, the batch pipeline above), and one later
call through the other path, to show where the threshold belongs. Images are the
benchmark's workload (distinct camera-like JPEGs) served from 127.0.0.1. Prints a
Markdown table; writes the rows as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import build_model, image_server, machine, prefix
from benchkit.workload import WorkloadSpec, build

SIZES = (1, 4, 64, 1000)
LATER_CALLS = 3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(**json.loads(args.cell))))
        return 0
    cache = Path(args.cache_dir)
    workload = build(WorkloadSpec(pairs=max(args.pairs)), cache)
    rows = []
    with image_server(workload, 0) as base_url, tempfile.TemporaryDirectory(prefix="tis-session-") as tmp:
        for arch in args.arch:
            model = build_model(arch, cache)
            for pairs in args.pairs:
                csv = prefix(workload, pairs).csv_for(base_url, Path(tmp) / f"pairs-{pairs}.csv")
                cell = {"model": model, "csv": str(csv), "later_calls": args.later_calls}
                done = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], check=True,
                                      capture_output=True, text=True)
                rows.append({"arch": arch, "pairs": pairs, **json.loads(done.stdout.splitlines()[-1])})
                print(row_line(rows[-1]), flush=True)
    result = {"machine": machine(), "load_average": os.getloadavg(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def run_cell(model: str, csv: str, later_calls: int) -> dict:
    """In a fresh process: the first call, the later calls, and one call through the other path."""
    import ray
    from bench import read_csv

    from tis_ray import Scorer, score_pairs
    from tis_ray.session import DIRECT_MAX_PAIRS

    records = list(zip(*read_csv(Path(csv))))
    settings = dict(model=model, device="cpu", dtype="float32")

    def timed(call) -> float:
        started = time.perf_counter()
        results = list(call())
        assert len(results) == len(records) and all(r.ok for r in results), [r.error for r in results if r.error]
        return time.perf_counter() - started

    first = timed(lambda: score_pairs(records, **settings))
    later = [timed(lambda: score_pairs(records, **settings)) for _ in range(later_calls)]
    direct = len(records) <= DIRECT_MAX_PAIRS
    # The other path: the pipeline (every call before the warm scorer) for a short call,
    # the warm actor for a long one.
    with Scorer(**settings, direct_max_pairs=0 if direct else len(records)) as other:
        other_s = timed(lambda: other.score_pairs(records))
    ray.shutdown()
    return {"first_s": first, "later_s": statistics.median(later), "later_all_s": later,
            "path": "warm actor" if direct else "pipeline",
            "other_path": "pipeline" if direct else "warm actor", "other_path_s": other_s}


def row_line(row: dict) -> str:
    return (f"| {row['arch']} | {row['pairs']:,} | {row['first_s']:.2f} | {row['later_s']:.2f} ({row['path']}) "
            f"| {row['other_path_s']:.2f} ({row['other_path']}) |")


def table(result: dict) -> str:
    head = ("| model | pairs | first call, s | later call, s (path) | later call by the other path, s |\n"
            "| --- | ---: | ---: | ---: | ---: |")
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    return "\n".join([head, *map(row_line, result["rows"]),
                      f"\n{result['machine']['cpu']}, {result['machine']['cores']} cores, load average {load}"])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["tiny", "vit-b-32"], choices=["tiny", "vit-b-32"])
    parser.add_argument("--pairs", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--later-calls", type=int, default=LATER_CALLS)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "tis-ray-bench"))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one cell, in its own process
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
