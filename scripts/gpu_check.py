"""The body of scripts/gpu_check.sh: CUDA throughput and float16 accuracy, in one short run.

Prints one table: for float16 and float32 and batch sizes 64, 256 and 1024, pairs/s
of (a) the model fed pre-processed tensors and (c) the whole tis-ray pipeline on a
generated workload served from 127.0.0.1; then max |delta similarity| between
float16 and float32 on the same pairs. Without CUDA it says so and stops, unless
--smoke runs the same paths on CPU (tiny model, tiny sizes, bfloat16 for float16).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench import build_model, image_server, prefix
from benchkit import model_only, pipeline_run
from benchkit.workload import WorkloadSpec, build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run on CPU with a tiny model (a check that it runs)")
    parser.add_argument("--pairs", type=int, default=4096, help="pairs per pipeline run")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "tis-ray-bench"))
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device here; skipping the CUDA measurements (use --smoke to run them on CPU)")
        return 0
    if args.smoke:
        arch, pairs, batch_sizes, dtypes = "tiny", 24, (8, 16), ("bfloat16", "float32")
    else:
        arch, pairs, batch_sizes, dtypes = "vit-b-32", args.pairs, (64, 256, 1024), ("float16", "float32")
        print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    cache = Path(args.cache_dir)
    model = build_model(arch, cache)
    workload = prefix(build(WorkloadSpec(pairs=pairs), cache), pairs)
    rows, cosines = [], {}
    with tempfile.TemporaryDirectory(prefix="tis-gpu-check-") as tmp, image_server(workload, 0) as base_url:
        csv = workload.csv_for(base_url, Path(tmp) / "pairs.csv")
        for dtype in dtypes:
            for batch_size in batch_sizes:
                ceiling = model_only.run(workload, model, dtype, batch_size)
                started = time.perf_counter()
                result = pipeline_run.run(csv, Path(tmp), model, dtype, batch_size, reduced_decode=True)
                rows.append((dtype, batch_size, ceiling["pairs"] / ceiling["seconds"],
                             result["pairs"] / result["seconds"], result["runtime"]))
                cosines[(dtype, batch_size)] = result["cosine"]
                print(f"  {dtype} batch {batch_size}: done in {time.perf_counter() - started:.0f}s", flush=True)
    print("| dtype | batch | (a) model only, pairs/s | (c) pipeline, pairs/s | c/a | runtime |")
    print("|---|---|---|---|---|---|")
    for dtype, batch_size, a, c, runtime in rows:
        print(f"| {dtype} | {batch_size} | {a:.0f} | {c:.0f} | {c / a:.2f} | {runtime} |")
    low, full = cosines[(dtypes[0], batch_sizes[0])], cosines[("float32", batch_sizes[0])]
    deltas = [abs(a - b) / 2 for a, b in zip(low, full) if a is not None and b is not None]
    print(f"max |delta similarity| {dtypes[0]} vs float32 over {len(deltas)} pairs: {max(deltas):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
