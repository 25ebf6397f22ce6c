"""The `tis-ray` command: parse arguments, call the API, print a summary."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import (
    DEFAULT_MODEL,
    SERVE_BATCH_WAIT_MS,
    SERVE_MAX_BATCH_SIZE,
    FetchConfig,
    ModelConfig,
    PipelineConfig,
)
from .loading import ModelLoadError
from .records import InputError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (InputError, ModelLoadError) as exc:
        print(f"tis-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntis-ray: interrupted; no output was written", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tis-ray", description="Score how well captions describe images with CLIP, on Ray.")
    parser.add_argument("--version", action="version", version=f"tis-ray {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    score = commands.add_parser("score", help="score every row of a CSV or Parquet file, or WebDataset shards")
    score.add_argument("input", help="CSV or Parquet file with an image column and a caption column, or WebDataset "
                                     ".tar shards: a file, a folder, a glob or braces ('shards/{00000..00099}.tar')")
    score.add_argument("-o", "--output", required=True, help="where to write results (.csv or .parquet)")
    score.add_argument("--image-column",
                       help="image column (default: a bytes column image, jpg, jpeg, png, webp or img, else the "
                            "first of image_url, url, image, image_path, in any case); for shards the image entry "
                            "(default: the first of jpg, jpeg, png, webp a sample has)")
    score.add_argument("--caption-column",
                       help="caption column (default: first of caption, text, in any case); for shards the "
                            "caption entry (default: txt) or a field of the json entry, as json.FIELD")
    score.add_argument("--prefix", default="", metavar="P",
                       help="name the result columns P+name (P+similarity, P+error, ...), for an input that "
                            "already has columns named like them")
    score.add_argument("--keep-json-fields", type=_names, default=(), metavar="F1,F2",
                       help="for shards: the fields of each sample's json entry to keep in the output")
    _add_model_arguments(score)
    score.add_argument("--batch-size", type=_positive_int, default=PipelineConfig.batch_size, help="pairs per model call")
    score.add_argument("--fetch-concurrency", type=_positive_int, default=FetchConfig.max_in_flight,
                       help="requests in flight per fetch actor")
    score.add_argument("--timeout", type=float, default=FetchConfig.timeout_s, help="seconds per image, retries included")
    score.add_argument("--retries", type=int, default=FetchConfig.retries, help="retries after connection errors, 429 and 5xx")
    score.add_argument("--full-decode", action="store_true",
                       help="decode large JPEGs at full size too (by default they decode at 1/2 to 1/8 scale, "
                            "still at least twice the model's input size)")
    score.add_argument("--fetch-actors", type=_positive_int, help="fetch actors (default: from the cluster's CPUs)")
    score.add_argument("--scorer-actors", type=_positive_int,
                       help="scorer actors (default on GPUs: one per 500,000 input rows, up to the GPUs the "
                            "cluster can reach and at least the GPUs up; else one)")
    score.add_argument("--with-cosine", action="store_true", help="also write the raw cosine similarity")
    score.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    again = score.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish an interrupted run: score only the rows not yet in OUTPUT.parts/")
    again.add_argument("--retry-errors", metavar="PREVIOUS_OUTPUT",
                       help="score again only the rows of PREVIOUS_OUTPUT that failed with a timeout, a 429, "
                            "a 5xx or a connection error; the other rows are copied as they were")
    score.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                       help="how often scored rows are made durable in OUTPUT.parts/ (default: 60)")
    score.set_defaults(run=run_score)

    serve = commands.add_parser("serve", help="run the HTTP scoring service (Ray Serve) in the foreground")
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--allow-hosts", nargs="*", default=[], metavar="HOST_OR_NETWORK",
                       help="host names, IPs or CIDR networks the service may fetch from even though they are "
                            "private or loopback (by default only public addresses are fetched)")
    serve.add_argument("--allowlist-only", action="store_true",
                       help="fetch only from --allow-hosts, public addresses included (no other lookups)")
    serve.add_argument("--max-batch-size", type=_positive_int, default=SERVE_MAX_BATCH_SIZE,
                       help="pairs per model call, across requests")
    serve.add_argument("--batch-wait-ms", type=float, default=SERVE_BATCH_WAIT_MS, help="longest wait to fill a batch")
    serve.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    serve.set_defaults(run=run_serve)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("TIS_MODEL", DEFAULT_MODEL),
                        help=f"Hugging Face CLIP id or local checkpoint folder (default: $TIS_MODEL, else {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: float16 on CUDA, bfloat16 on CPUs with native bf16, else float32")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run_score(args: argparse.Namespace) -> int:
    from .api import rescore_errors, score_file  # imports Ray; keep `--help` fast
    from .checkpoint import checkpoint_dir

    options = dict(
        image_column=args.image_column,
        caption_column=args.caption_column,
        prefix=args.prefix,
        keep_json_fields=args.keep_json_fields,
        model=ModelConfig(model=args.model, device=args.device, dtype=args.dtype),
        fetch=FetchConfig(max_in_flight=args.fetch_concurrency, timeout_s=args.timeout, retries=args.retries,
                          reduced_decode=not args.full_decode),
        pipeline=PipelineConfig(batch_size=args.batch_size, fetch_actors=args.fetch_actors,
                                scorer_actors=args.scorer_actors, with_cosine=args.with_cosine),
        address=args.address,
        progress=sys.stderr.isatty(),
    )
    try:
        if args.retry_errors:
            summary = rescore_errors(args.input, args.retry_errors, args.output, **options)
        else:
            summary = score_file(args.input, args.output, resume=args.resume,
                                 checkpoint_every_s=args.checkpoint_every, **options)
    except KeyboardInterrupt:
        kept = checkpoint_dir(args.output)
        if args.retry_errors or not os.path.isdir(kept):
            print("\ntis-ray: interrupted; no output was written", file=sys.stderr)
        else:
            print(f"\ntis-ray: interrupted; the rows scored so far are kept in {kept}; "
                  "run the same command with --resume to finish", file=sys.stderr)
        return 130
    print(f"wrote {args.output}")
    print(f"stats: {summary.stats_file}")
    print(summary.format())
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .api import connect
    from .loading import load_preprocess_spec
    from .serve import run_foreground

    load_preprocess_spec(args.model)  # a bad model is one clear line, before Serve starts
    connect(args.address)
    run_foreground(
        {"model": args.model, "device": args.device, "dtype": args.dtype, "allow_hosts": args.allow_hosts,
         "allowlist_only": args.allowlist_only},
        host=args.host, port=args.port, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
    )
    return 0
