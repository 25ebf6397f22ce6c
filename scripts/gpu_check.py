"""The body of scripts/gpu_check.sh: what a CUDA machine does with tis-ray's model and decode.

Two parts, each printing one table and writing one JSON file under --out:

- Ray-free (ray_free.json): model-only pairs/s for float16, bfloat16 and float32 (TF32 off)
  at batch 64, 256 and 1024, split into image encode, tokenise and text encode; peak GPU
  memory of each setting; max |delta similarity| of float16 and bfloat16 against float32;
  CPU decode images/s on every core (tis-ray's decode path, reduced decode as shipped); and
  which of decode and the float16 model limits the feed, by how much. It runs from the
  source tree with no install and imports neither Ray nor pydantic: the lent GPU machine has
  torch and transformers but no Ray and no package registry. The third-party modules it
  loaded are listed in its JSON (`third_party_imports`).
- Pipeline (pipeline.json), only where Ray is importable: the real `score_file` on the
  workload served from 127.0.0.1, float16, pools as tis-ray plans them for this machine,
  its steady pairs/s (after start-up) against model-only at the same batch size.

    scripts/gpu_check.sh [--out DIR]   # on a CUDA machine, a few minutes
    scripts/gpu_check.sh --smoke       # every path on CPU: tiny model, tiny sizes, bfloat16 for float16

Without a CUDA device (and without --smoke) it exits 1 with one line: a GPU check that
found no GPU has checked nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tis_ray from this source tree, ahead of any installed copy: the GPU machine has no install
# and no package registry. (scripts/, this file's folder, is sys.path[0] already.)
sys.path.insert(1, str(REPO))

from bench import build_model, machine, positive_int  # noqa: E402 - after the path is set
from benchkit.workload import Workload, WorkloadSpec, build  # noqa: E402

DEFAULT_OUT = REPO / "build" / "gpu-check"  # build/ is git-ignored


@dataclass(frozen=True)
class CheckSettings:
    arch: str  # make_test_model.py's architecture: random weights, the real shapes
    device: str
    dtypes: tuple[str, ...]  # float32 last: the reference the others drift from
    fast_dtype: str  # tis-ray's default on the device; the pipeline part's and the feed's
    batch_sizes: tuple[int, ...]
    pairs: int  # workload pairs: the JPEGs decoded, the pipeline's rows
    model_pairs: int  # pairs per model-only setting (captions and prepared images cycled)


CUDA_SETTINGS = CheckSettings("vit-b-32", "cuda", ("float16", "bfloat16", "float32"), "float16", (64, 256, 1024),
                              pairs=8192, model_pairs=16384)
SMOKE_SETTINGS = CheckSettings("tiny", "cpu", ("bfloat16", "float32"), "bfloat16", (8, 16), pairs=48, model_pairs=48)


@dataclass(frozen=True)
class CheckContext:
    """What every measurement of the check may use."""

    settings: CheckSettings
    model: str  # the checkpoint folder
    workload: Workload


def scorer_overhead(context: CheckContext) -> dict:
    """The scorer's own time per batch beyond the bare model calls (`benchkit.scorer_overhead`), at the
    fast dtype and the largest batch: score() only, which needs no Ray (the stage's figure is the pipeline's)."""
    from benchkit import scorer_overhead as overhead

    settings = context.settings
    return overhead.measure(context.model, settings.device, settings.fast_dtype, batch_size=max(settings.batch_sizes),
                            with_stage=False)


# More Ray-free measurements: each a function of the context returning a JSON-ready dict,
# stored in ray_free.json under the function's name and printed after the table.
MORE_RAY_FREE_MEASUREMENTS: tuple[Callable[[CheckContext], dict], ...] = (scorer_overhead,)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and (missing := no_cuda_reason(torch)):
        print(f"gpu_check: no CUDA device: {missing}", file=sys.stderr)
        return 1
    settings = SMOKE_SETTINGS if args.smoke else CUDA_SETTINGS
    if args.pairs:
        settings = replace(settings, pairs=args.pairs)
    host = {**machine(), "cuda": torch.version.cuda}
    print(f"gpu_check on {host['gpu'] or 'CPU (smoke)'}, torch {torch.__version__}, {host['cores']} cores", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir)
    started = time.perf_counter()
    workload = build(WorkloadSpec(pairs=settings.pairs), cache)
    context = CheckContext(settings, build_model(settings.arch, cache), workload)
    header = {"machine": host, "settings": asdict(settings)}

    ray_free = ray_free_part(context)
    ray_free["third_party_imports"] = third_party_imports()
    ray_free["seconds"] = time.perf_counter() - started  # the model and workload built, if not cached, included
    write_json(out / "ray_free.json", {**header, **ray_free})
    print(ray_free_report(ray_free), flush=True)

    started = time.perf_counter()
    pipeline = pipeline_part(context, ray_free["model_only"])
    pipeline["seconds"] = time.perf_counter() - started
    write_json(out / "pipeline.json", {**header, **pipeline})
    if "rows" in pipeline:
        print(pipeline_table(pipeline["rows"]))
    print(f"wrote {out / 'ray_free.json'} and {out / 'pipeline.json'}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="run every path on CPU with a tiny model (CI)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for ray_free.json and pipeline.json")
    parser.add_argument("--pairs", type=positive_int, help="workload pairs (default 8192; 48 with --smoke)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "tis-ray-bench"),
                        help="generated models and workload images, kept between runs")
    return parser.parse_args(argv)


def no_cuda_reason(torch) -> str | None:
    """Why torch cannot run on a CUDA device here, or None where it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device{shown}"
    return None


def ray_free_part(context: CheckContext) -> dict:
    from benchkit import decode_rate, gpu_parts

    import tis_ray
    from tis_ray.loading import load_preprocess_spec

    settings, workload = context.settings, context.workload
    gpu_parts.set_tf32(False)
    images = [workload.image_dir / name for name in dict.fromkeys(workload.names)]
    print(f"  decode: {len(images)} JPEGs on {os.cpu_count()} processes", flush=True)
    decode = decode_rate.measure(images, load_preprocess_spec(context.model), os.cpu_count() or 1)
    rows, cosines = [], {}
    for dtype in settings.dtypes:
        started = time.perf_counter()
        times, cosines[dtype] = gpu_parts.measure_dtype(workload, context.model, settings.device, dtype,
                                                        settings.batch_sizes, settings.model_pairs)
        rows += times
        print(f"  model only, {dtype}: {time.perf_counter() - started:.0f}s", flush=True)
    model_only = [{**asdict(r), "pairs_per_second": r.pairs_per_second,
                   "max_abs_delta_similarity_vs_float32": None if r.dtype == "float32" else
                   gpu_parts.max_similarity_drift(cosines[r.dtype][r.batch_size], cosines["float32"][r.batch_size])}
                  for r in rows]
    fastest = max((r for r in rows if r.dtype == settings.fast_dtype), key=lambda r: r.pairs_per_second)
    return {
        "tis_ray_source": str(Path(tis_ray.__file__).parent),  # this source tree, whatever is installed
        "tf32": gpu_parts.tf32_flags(),
        "model_only": model_only,
        "decode": {**asdict(decode), "images_per_second": decode.images_per_second},
        "feed": feed_limit(decode.images_per_second, decode.workers, fastest.pairs_per_second, fastest.dtype,
                           fastest.batch_size),
        **{measure.__name__: measure(context) for measure in MORE_RAY_FREE_MEASUREMENTS},
    }


def feed_limit(decode_rate: float, workers: int, model_rate: float, dtype: str, batch_size: int) -> dict:
    """Which of CPU decode (every core) and the model (its best batch size) bounds the pipeline, and by how much."""
    limit = "decode" if decode_rate < model_rate else "model"
    return {"decode_images_per_second": decode_rate, "decode_workers": workers,
            "model_pairs_per_second": model_rate, "model_dtype": dtype, "model_batch_size": batch_size,
            "limit": limit, "ratio": max(decode_rate, model_rate) / min(decode_rate, model_rate)}


def third_party_imports() -> list[str]:
    """Top-level modules loaded so far that are neither the standard library's nor this repository's
    (tis_ray/, scripts/): what a machine must provide for what ran."""
    own = (REPO / "tis_ray", REPO / "scripts")
    found = set()
    for name in list(sys.modules):
        top = name.partition(".")[0]
        # A leading "_": a package's private extension (scipy's _csparsetools, Cython's _cython_3_1_4),
        # sysconfig's data, __main__ or an install's import hook; each comes with a public package.
        if top in sys.stdlib_module_names or top.startswith("_"):
            continue
        module = sys.modules.get(top)
        file = getattr(module, "__file__", None)
        if file is None and not hasattr(module, "__path__"):  # made at run time (Cython's cython_runtime)
            continue
        if file and any(Path(file).resolve().is_relative_to(folder) for folder in own):
            continue
        found.add(top)
    return sorted(found)


def ray_free_report(part: dict) -> str:
    lines = ["| dtype | batch | pairs/s | image encode s | tokenise s | text encode s | peak GPU MiB "
             "| max abs delta similarity vs float32 |", "|---|---|---|---|---|---|---|---|"]
    for r in part["model_only"]:
        peak, drift = _figure(r["peak_gpu_mib"], ".0f"), _figure(r["max_abs_delta_similarity_vs_float32"], ".2e")
        lines.append(f"| {r['dtype']} | {r['batch_size']} | {r['pairs_per_second']:.0f} | {r['image_seconds']:.3f} "
                     f"| {r['tokenise_seconds']:.3f} | {r['text_seconds']:.3f} | {peak} | {drift} |")
    decode, feed = part["decode"], part["feed"]
    lines.append(f"CPU decode: {decode['images_per_second']:.0f} images/s on {decode['workers']} processes "
                 f"({decode['images']} JPEGs, reduced decode {'on' if decode['reduced_decode'] else 'off'})")
    model = (f"model {feed['model_pairs_per_second']:.0f} pairs/s "
             f"({feed['model_dtype']}, batch {feed['model_batch_size']})")
    if feed["limit"] == "decode":
        verdict = f"decode is the limit: the model is {feed['ratio']:.2f}x faster than all cores decode"
    else:
        verdict = f"the model is the limit: all cores decode {feed['ratio']:.2f}x faster than it scores"
    lines.append(f"feed: decode {feed['decode_images_per_second']:.0f} images/s vs {model}: {verdict}")
    lines += [f"{name}: {json.dumps(part[name])}" for name in (m.__name__ for m in MORE_RAY_FREE_MEASUREMENTS)]
    lines.append(f"Ray-free part imported: {', '.join(part['third_party_imports'])}")
    return "\n".join(lines)


def pipeline_part(context: CheckContext, model_only: list[dict]) -> dict:
    """score_file at the fast dtype for each batch size, against model-only at the same settings."""
    try:
        import ray
    except ImportError:
        print("pipeline part skipped: Ray is not installed here")
        return {"skipped": "Ray is not installed here"}
    from bench import image_server
    from benchkit import pipeline_run

    from tis_ray.config import ModelConfig, PipelineConfig
    from tis_ray.pool_sizing import plan_pools
    from tis_ray.ray_session import connect

    settings, workload = context.settings, context.workload
    ceiling = {r["batch_size"]: r["pairs_per_second"] for r in model_only if r["dtype"] == settings.fast_dtype}
    model = ModelConfig(model=context.model, device=settings.device, dtype=settings.fast_dtype)
    rows = []
    connect("local")  # before the clock, as a cluster is up before a job comes
    try:
        resources = ray.cluster_resources()
        with tempfile.TemporaryDirectory(prefix="tis-gpu-check-") as tmp, image_server(workload, 0) as base_url:
            csv = workload.csv_for(base_url, Path(tmp) / "pairs.csv")
            for batch_size in settings.batch_sizes:
                plan = plan_pools(model, PipelineConfig(batch_size=batch_size), resources, rows=settings.pairs)
                # Every core fetching as planned; on a multi-GPU node no scorer without a batch to score.
                scorers = min(plan.scorer_actors, -(-settings.pairs // batch_size))
                result = pipeline_run.run(csv, Path(tmp), context.model, settings.fast_dtype, batch_size,
                                          reduced_decode=True, fetch_actors=plan.fetch_actors, scorer_actors=scorers)
                steady = result["steady_pairs_per_second"]
                rows.append({
                    "dtype": settings.fast_dtype, "batch_size": batch_size, "fetch_actors": plan.fetch_actors,
                    "scorer_actors": scorers, "pairs": result["pairs"], "scored": result["scored"],
                    "errors": result["errors"], "seconds": result["seconds"],
                    "seconds_to_first_rows": result["seconds_to_first_rows"], "steady_pairs_per_second": steady,
                    "model_only_pairs_per_second": ceiling[batch_size],
                    "steady_over_model_only": None if steady is None else steady / ceiling[batch_size],
                    "runtime": result["runtime"],
                })
                print(f"  pipeline, batch {batch_size}: {result['seconds']:.0f}s", flush=True)
    finally:
        ray.shutdown()
    return {"resources": resources, "rows": rows}


def pipeline_table(rows: list[dict]) -> str:
    lines = ["| dtype | batch | fetch actors | scorers | model only pairs/s | pipeline steady pairs/s | steady / model "
             "| start-up s | scored |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steady, ratio = _figure(r["steady_pairs_per_second"], ".0f"), _figure(r["steady_over_model_only"], ".2f")
        lines.append(f"| {r['dtype']} | {r['batch_size']} | {r['fetch_actors']} | {r['scorer_actors']} "
                     f"| {r['model_only_pairs_per_second']:.0f} | {steady} | {ratio} "
                     f"| {_figure(r['seconds_to_first_rows'], '.1f')} | {r['scored']} of {r['pairs']} |")
    return "\n".join(lines)


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
