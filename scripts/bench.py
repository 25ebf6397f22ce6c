"""Side-by-side benchmark: model only (a), the challenge baseline (b) and tis-ray (c).

Also (d), fetch + decode alone, whose CPU cost per image the capacity plan uses; (e),
the real pipeline with a score stage that does no model work (the feed rate, per CPU);
the bundled demo (examples/pairs.csv, 10 rows: start-up alone); (c) again with another
input kind: the same images as WebDataset shards, where decoding is the only CPU cost
left before the model; and (c) at 2,000 to 50,000 pairs for its memory.

One command, one run, the same generated workload for every contender:

    python scripts/bench.py                 # 2,000 pairs at 0 and 100 ms, vit-b-32, 3 rounds
    python scripts/bench.py --quick         # a tiny version of everything (CI runs it)
    python scripts/bench.py --suite models  # one model, another, both in one pass, embeddings
    python scripts/bench.py --suite inputs  # the same pairs from loopback URLs and from shards
    python scripts/bench.py --suite serve   # one `tis-ray serve` replica at 1 to 64 clients

A suite other than `main` writes a section of its own, from its own run, and leaves
the main run's section as it is.

Each contender runs in a fresh subprocess (no shared caches, memory measured per
contender as the summed PSS of its process tree). Results go to a JSON file, to the
generated part of docs/benchmarks.md and to PNG plots in docs/images/.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchkit import report
from benchkit.memory import TreeMemorySampler
from benchkit.workload import Workload, WorkloadSpec, build

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("model_only", "demo", "fetch_decode", "feed", "baseline", "tis_ray")
DEMO = REPO / "examples" / "pairs.csv"
# The memory sweep's URLs repeat this many distinct images, already made for the main workload:
# 50,000 distinct camera JPEGs would take ~1 h to make here (0.14 s of a core each).
SWEEP_DISTINCT_IMAGES = 2000
SUITES = ("main", "models", "inputs", "serve")
ARCHS = ("tiny", "vit-b-32", "siglip", "siglip-tiny")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "_contender":
        return run_contender(json.loads(args.job))
    started = time.time()
    cache = Path(args.cache_dir)
    model = args.model or build_model(args.arch, cache)
    workload = build(WorkloadSpec(pairs=args.pairs, repeat_share=args.repeat_share), cache)
    results: dict = {"machine": machine(), "settings": settings(args, model), "runs": [], "sweep": [], "levers": [],
                     "input_kinds": [], "models": []}
    with tempfile.TemporaryDirectory(prefix="tis-bench-") as tmp:
        work = Path(tmp)
        if args.suite == "main":
            run_main_suite(args, model, workload, work, results)
            run_sweep(args, build_model(args.sweep_arch, cache), cache, work, results)
        elif args.suite == "models":
            run_models_suite(args, model, build_model(args.second_arch, cache), workload, work, results)
        elif args.suite == "serve":
            run_serve_suite(args, model, workload, work, results)
        else:
            run_inputs_suite(args, model, workload, work, results)
    results["seconds"] = time.time() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(without_bulk(results), indent=1))  # first: a report bug loses no run
    report.write(results, Path(args.out), Path(args.plots))
    print(report.printed_tables(results))
    print(f"wrote {args.json}, {args.out}" + (f", plots in {args.plots}" if args.suite == "main" else ""))
    return 0


def run_main_suite(args, model: str, workload: Workload, work: Path, results: dict) -> None:
    """(a)-(e) and the demo at each latency; (c) with each lever off; (c) from shards; accuracy."""
    for latency in args.latency_ms:
        with image_server(workload, latency) as base_url:
            csv = workload.csv_for(base_url, work / f"pairs-{args.pairs}-{latency}ms.csv")
            for round_ in range(args.runs):
                for name in CONTENDERS:
                    if name in report.NO_NETWORK and latency != args.latency_ms[0]:
                        continue
                    pairs, rows = (10, DEMO) if name == "demo" else (args.pairs, csv)
                    result = contender(name, args, model, workload, pairs, rows, work)
                    results["runs"].append({"latency_ms": latency, "round": round_, **result})
            if latency == args.latency_ms[0]:
                for name, label, overrides in lever_variants(args):
                    result = contender(name, args, model, workload, args.pairs, csv, work, **overrides)
                    results["levers"].append({"lever": label, "latency_ms": latency, **result})
    run_shards(args, model, workload, work, results)
    results["accuracy"] = contender("accuracy", args, model, workload, args.pairs, None, work)["rows"]


def run_sweep(args, model: str, cache: Path, work: Path, results: dict) -> None:
    """(c) with the sweep's model at each size, one after another, for peak memory against N.

    Every row is fetched, decoded and scored as in the main run; the URLs repeat
    `SWEEP_DISTINCT_IMAGES` images, so a rare pair of rows in one batch shares an image."""
    sizes = sorted({args.pairs, *args.sweep})
    distinct = results["settings"]["sweep_distinct_images"] = min(SWEEP_DISTINCT_IMAGES, args.pairs)
    workload = build(WorkloadSpec(pairs=sizes[-1], repeat_share=1 - distinct / sizes[-1]), cache)
    with image_server(workload, args.latency_ms[0]) as base_url:
        for pairs in sizes:
            csv = prefix(workload, pairs).csv_for(base_url, work / f"sweep-{pairs}.csv")
            result = contender("tis_ray", args, model, workload, pairs, csv, work)
            results["sweep"].append({"latency_ms": args.latency_ms[0], "arch": args.sweep_arch, **result})


def run_shards(args, model: str, workload: Workload, work: Path, results: dict) -> None:
    shards = prefix(workload, args.pairs).shards_in(work / "shards")
    for round_ in range(args.runs):  # no network: measured once per round, like (a)
        result = contender("tis_ray", args, model, workload, args.pairs, None, work, input=shards)
        results["input_kinds"].append({"input_kind": "webdataset", "round": round_, **result})


def run_inputs_suite(args, model: str, workload: Workload, work: Path, results: dict) -> None:
    """(c) on the same pairs from loopback URLs (the first latency) and from WebDataset shards, by rounds."""
    latency = args.latency_ms[0]
    with image_server(workload, latency) as base_url:
        csv = prefix(workload, args.pairs).csv_for(base_url, work / f"pairs-{args.pairs}.csv")
        for round_ in range(args.runs):
            result = contender("tis_ray", args, model, workload, args.pairs, csv, work)
            results["runs"].append({"latency_ms": latency, "round": round_, **result})
    run_shards(args, model, workload, work, results)


def run_models_suite(args, first: str, second: str, workload: Workload, work: Path, results: dict) -> None:
    """Each model alone and both in one pass, (a) and (c), and (c) with embeddings, at the first latency.

    (d) with the first model's preprocessing prices one fetch + decode: two models cost
    no more than the sum of their (a) times plus that, if decoding once pays off.
    """
    both = {"first": first, "second": second}
    variants = [("model_only", "first", first, {}), ("model_only", "second", second, {}),
                ("fetch_decode", "first", first, {}),
                ("tis_ray", "first", first, {}), ("tis_ray", "second", second, {}),
                ("tis_ray", "first + second", both, {}),
                ("tis_ray", "first, with embeddings", first, {"with_embeddings": True})]
    with image_server(workload, args.latency_ms[0]) as base_url:
        csv = prefix(workload, args.pairs).csv_for(base_url, work / f"pairs-{args.pairs}.csv")
        for round_ in range(args.runs):
            for name, label, model, overrides in variants:
                result = contender(name, args, model, workload, args.pairs, csv, work, **overrides)
                results["models"].append({"variant": label, "round": round_, **result})


def run_serve_suite(args, model: str, workload: Workload, work: Path, results: dict) -> None:
    """(a) at the service's batch size, then one replica of `tis-ray serve` under 1 to 64 clients."""
    from benchkit import serve_load

    from tis_ray.config import SERVE_MAX_BATCH_SIZE

    results["settings"]["batch_size"] = SERVE_MAX_BATCH_SIZE
    args.batch_size = SERVE_MAX_BATCH_SIZE
    pairs = prefix(workload, args.pairs)
    results["runs"].append({"latency_ms": 0, "round": 0,
                            **contender("model_only", args, model, workload, args.pairs, None, work)})
    with image_server(workload, args.latency_ms[0]) as first, image_server(workload, args.latency_ms[-1]) as last:
        servers = {args.latency_ms[0]: first, args.latency_ms[-1]: last}
        results["serve"] = serve_load.run(pairs, model, args.dtype, servers, free_port(), work / "serve.log")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=("run", "_contender"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=positive_int, default=2000, help="pairs in the main comparison")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 100], help="server latency per request")
    parser.add_argument("--sweep", type=positive_int, nargs="*", default=[10000, 50000],
                        help="more sizes for tis-ray alone, besides --pairs (memory vs N)")
    parser.add_argument("--sweep-arch", default="tiny", choices=ARCHS,
                        help="the model of the memory sweep (tiny: 50,000 pairs of ViT-B/32 would take ~25 min here)")
    parser.add_argument("--repeat-share", type=float, default=0.0, help="share of rows repeating an earlier URL")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="rounds of the main comparison (medians are quoted)")
    parser.add_argument("--model", help="CLIP checkpoint folder (default: build --arch with make_test_model.py)")
    parser.add_argument("--suite", default="main", choices=SUITES,
                        help="main: (a)-(d) as above; models: several models and embeddings; inputs: URLs vs shards; "
                             "serve: the service under load")
    parser.add_argument("--arch", default="vit-b-32", choices=ARCHS)
    parser.add_argument("--second-arch", default="siglip", choices=ARCHS,
                        help="the second model of --suite models (SigLIP base, patch 16, 224)")
    parser.add_argument("--dtype", default="auto", help="dtype for (a) and (c); (b) is float32 by definition")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="pairs per model call in (a) and (c)")
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=True,
                        help="also run (c) with each speed lever turned off, at the first latency")
    parser.add_argument("--accuracy-pairs", type=positive_int, default=256, help="workload pairs in the accuracy check")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "tis-ray-bench"))
    parser.add_argument("--json", help="where the results go (default: docs/benchmarks.json for the main run, "
                                       "docs/benchmarks-SUITE.json for another suite)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--plots", default=str(REPO / "docs" / "images"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 48 pairs, 0 and 20 ms, one round: checks that everything still runs")
    args = parser.parse_args(argv)
    args.json = args.json or str(REPO / "docs" / report.json_name(args.suite))
    if args.quick:
        args.arch, args.pairs, args.latency_ms, args.sweep, args.runs = "tiny", 48, [0, 20], [96], 1
        args.sweep_arch = "tiny"
        args.second_arch = "siglip-tiny"
        args.accuracy_pairs = 16
    return args


def lever_variants(args) -> list[tuple[str, str, dict]]:
    """(contender, label, settings) for each lever turned off alone."""
    if not args.levers:
        return []
    return [("tis_ray", "float32 instead of the fast dtype", {"dtype": "float32"}),
            ("tis_ray", "whole-image decode", {"reduced_decode": False}),
            ("fetch_decode", "whole-image decode", {"reduced_decode": False})]


def contender(name, args, model, workload: Workload, pairs, csv, work: Path, **overrides) -> dict:
    """Run one contender in a fresh interpreter; its result, with time and peak memory."""
    job = {"name": name, "model": model, "dtype": args.dtype, "batch_size": args.batch_size,
           "workload": {"spec": asdict(workload.spec), "cache": str(workload.image_dir.parent)},
           "pairs": pairs, "csv": str(csv) if csv else None, "work": str(work),
           "accuracy_pairs": args.accuracy_pairs, "reduced_decode": True, **overrides}
    result_path = work / f"result-{name}-{time.monotonic_ns()}.json"
    job["result"] = str(result_path)
    command = [sys.executable, str(Path(__file__).resolve()), "_contender", "--job", json.dumps(job)]
    print(f"[bench] {name} {pairs} pairs {overrides or ''} {csv.name if csv else ''}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, cwd=REPO)
    with TreeMemorySampler(process.pid) as sampler:
        if process.wait() != 0:
            raise SystemExit(f"bench: contender {name} failed with exit status {process.returncode}")
    result = json.loads(result_path.read_text())
    result.update(name=name, memory=asdict(sampler.peaks), **overrides)
    return result


def run_contender(job: dict) -> int:
    spec = WorkloadSpec(**job["workload"]["spec"])
    workload = prefix(build(spec, Path(job["workload"]["cache"])), job["pairs"])
    if job["name"] == "model_only":
        from benchkit import model_only
        result = model_only.run(workload, job["model"], job["dtype"], job["batch_size"])
    elif job["name"] == "fetch_decode":
        from benchkit import fetch_only
        result = fetch_only.run(read_csv(Path(job["csv"]))[0], job["model"], job["reduced_decode"])
    elif job["name"] == "baseline":
        from benchkit import baseline
        urls, captions = read_csv(Path(job["csv"]))
        result = baseline.run(urls, captions, job["model"])
    elif job["name"] in ("tis_ray", "feed", "demo"):
        from benchkit import pipeline_run
        result = pipeline_run.run(job.get("input") or job["csv"], Path(job["work"]), job["model"], job["dtype"],
                                  job["batch_size"], job["reduced_decode"], job.get("with_embeddings", False),
                                  feed_only=job["name"] == "feed")
    else:
        from benchkit import accuracy
        result = {"rows": accuracy.run(workload, job["model"], job["accuracy_pairs"])}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def without_bulk(results: dict) -> dict:
    """Per-row cosines only where the report compares them (round 1); the rest would be megabytes."""
    for result in results["runs"] + results["sweep"] + results["levers"] + results["input_kinds"] + results["models"]:
        if result.get("round") != 0:
            result.pop("cosine", None)
    return results


def prefix(workload: Workload, pairs: int) -> Workload:
    """The first `pairs` rows: a larger run's workload extends a smaller one's."""
    return Workload(workload.spec, workload.image_dir, workload.names[:pairs], workload.captions[:pairs])


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    import csv

    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["image_url"] for r in rows], [r["caption"] for r in rows]


class image_server:
    """The workload's images on 127.0.0.1 with a fixed latency, in a subprocess."""

    def __init__(self, workload: Workload, latency_ms: float):
        self.command = [sys.executable, str(Path(__file__).parent / "benchkit" / "image_server.py"),
                        str(workload.image_dir), str(latency_ms)]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        return f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def build_model(arch: str, cache: Path) -> str:
    folder = cache / f"model-{arch}"
    if not (folder / "config.json").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_test_model.py"), str(folder), "--arch", arch],
                       check=True)
    return str(folder)


def machine() -> dict:
    import os

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def settings(args, model: str) -> dict:
    return {"suite": args.suite, "second_arch": args.second_arch if args.suite == "models" else None,
            "pairs": args.pairs, "latency_ms": args.latency_ms, "sweep": args.sweep, "runs": args.runs,
            "repeat_share": args.repeat_share, "arch": args.arch if not args.model else None, "model": model,
            "sweep_arch": args.sweep_arch if args.suite == "main" else None,
            "dtype": args.dtype, "batch_size": args.batch_size, "quick": args.quick}


if __name__ == "__main__":
    sys.exit(main())
