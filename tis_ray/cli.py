"""The `tis-ray` command: parse arguments, call the API, print a summary."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from . import __version__
from .config import (
    CPU_SCORER_BATCH_SIZE,
    DEFAULT_MODEL,
    GPU_SCORER_BATCH_SIZE,
    SERVE_BATCH_WAIT_MS,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_PIXELS,
    FetchConfig,
    ModelConfig,
    PipelineConfig,
    split_model_option,
)
from .errors import InputError, TisRayError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except TisRayError as exc:  # anything the user can fix: one line, exit 2
        print(f"tis-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntis-ray: interrupted; no output was written", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tis-ray", description="Score how well captions describe images with CLIP or SigLIP, on Ray.")
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
    _add_model_arguments(score, several=True)
    score.add_argument("--batch-size", type=_positive_int, default=PipelineConfig.batch_size,
                       help=f"pairs per model call (default: {GPU_SCORER_BATCH_SIZE} on a GPU, "
                            f"{CPU_SCORER_BATCH_SIZE} on a CPU)")
    score.add_argument("--fetch-concurrency", type=_positive_int, default=FetchConfig.max_in_flight,
                       help="requests in flight per fetch actor")
    score.add_argument("--timeout", type=float, default=FetchConfig.timeout_s,
                       help="seconds per image, retries included")
    score.add_argument("--retries", type=int, default=FetchConfig.retries,
                       help="retries after connection errors, 429 and 5xx")
    score.add_argument("--full-decode", action="store_true",
                       help="decode large JPEGs at full size too (by default they decode at 1/2 to 1/8 scale, "
                            "never below the model's input size)")
    score.add_argument("--fetch-actors", type=_positive_int, help="fetch actors (default: from the cluster's CPUs)")
    score.add_argument("--scorer-actors", type=_positive_int,
                       help="scorer actors (default on GPUs: one per 500,000 input rows, up to the GPUs the "
                            "cluster can reach and at least the GPUs up; else one)")
    score.add_argument("--with-cosine", action="store_true", help="also write the raw cosine similarity")
    score.add_argument("--with-probability", action="store_true",
                       help="also write the pair head's match probability (SigLIP and SigLIP 2 only; CLIP has none)")
    score.add_argument("--with-truncation", action="store_true",
                       help="also write caption_truncated: whether the caption was cut to the model's context")
    score.add_argument("--with-embeddings", action="store_true",
                       help="also write the unit image_embedding and text_embedding (Parquet output only)")
    score.add_argument("--embedding-dtype", choices=("float16", "float32"), default=PipelineConfig.embedding_dtype,
                       help="the embeddings' number type (default: float16)")
    _add_politeness_arguments(score)
    score.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    again = score.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish an interrupted run: score only the rows not yet in OUTPUT.parts/")
    again.add_argument("--retry-errors", metavar="PREVIOUS_OUTPUT",
                       help="score again only the rows of PREVIOUS_OUTPUT that failed with a timeout, a 429, "
                            "a 5xx or a connection error; the other rows are copied as they were")
    score.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                       help="how often scored rows are made durable in OUTPUT.parts/ (default: 60)")
    score.add_argument("--report", action="store_true",
                       help="also write OUTPUT.report.html (see `tis-ray report`) at the end")
    score.add_argument("--verbose", action="store_true",
                       help="show all of Ray's own output: its log lines and Ray Data's per-operator progress bars "
                            "(progress is then logged as lines)")
    score.add_argument("--progress-every", type=_positive_float, default=30.0, metavar="SECONDS",
                       help="when stderr is not a terminal, log a progress line this often (default: 30)")
    score.set_defaults(run=run_score)

    report = commands.add_parser("report", help="write a self-contained HTML report of a scored file")
    report.add_argument("scored", help="a file `tis-ray score` wrote (.csv or .parquet)")
    report.add_argument("-o", "--output", help="the HTML file (default: SCORED.report.html)")
    report.add_argument("--thumbnails", type=_positive_int, default=24, metavar="N",
                        help="pairs per thumbnail grid: lowest, highest, around the threshold (default: 24)")
    report.add_argument("--no-thumbnails", action="store_true", help="fetch no images")
    report.add_argument("--threshold", help="where the slider starts and the borderline strip is taken "
                                            "(default: the threshold that keeps the top 30%%)")
    report.add_argument("--image-column", help="image column (default: first of image_url, url, image, image_path)")
    report.add_argument("--caption-column", help="caption column (default: first of caption, text)")
    report.set_defaults(run=run_report)

    filter_ = commands.add_parser("filter", help="keep the rows of a scored file above a threshold or in the top P%%")
    filter_.add_argument("scored", help="a file `tis-ray score` wrote (.csv or .parquet)")
    filter_.add_argument("-o", "--output", required=True, help="where to write the kept rows (same format)")
    rule = filter_.add_mutually_exclusive_group(required=True)
    rule.add_argument("--min-similarity", metavar="X", help="keep rows with similarity >= X")
    rule.add_argument("--keep-top", metavar="P%", help="keep exactly ceil(P%% of the scored rows), the highest; "
                                                     "ties at the cut are kept in file order")
    filter_.add_argument("--model", help="whose scores, in a file with several (similarity_<NAME> columns)")
    filter_.add_argument("--keep-errors", action="store_true", help="also keep the rows that have no score")
    filter_.set_defaults(run=run_filter)

    serve = commands.add_parser("serve", help="run the HTTP scoring service (Ray Serve) in the foreground")
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--allow-hosts", nargs="*", default=[], metavar="HOST_OR_NETWORK",
                       help="host names, IPs or CIDR networks the service may fetch from even though they are "
                            "private or loopback (by default only public addresses are fetched)")
    serve.add_argument("--allowlist-only", action="store_true",
                       help="fetch only from --allow-hosts, public addresses included (no other lookups)")
    serve.add_argument("--allow-ports", nargs="*", type=_port, default=[], metavar="PORT",
                       help="ports to fetch from besides 80 and 443 (an --allow-hosts entry may also name "
                            "its own port: HOST:PORT)")
    serve.add_argument("--allow-wide-networks", action="store_true",
                       help="let --allow-hosts name networks wider than /8 (IPv4) or /32 (IPv6)")
    serve.add_argument("--max-pixels", type=_positive_int, default=SERVE_MAX_PIXELS,
                       help=f"largest image, in pixels, the service decodes (default: {SERVE_MAX_PIXELS:,})")
    _add_politeness_arguments(serve)
    serve.add_argument("--max-batch-size", type=_positive_int, default=SERVE_MAX_BATCH_SIZE,
                       help="pairs per model call, across requests")
    serve.add_argument("--batch-wait-ms", type=float, default=SERVE_BATCH_WAIT_MS, help="longest wait to fill a batch")
    serve.add_argument("--gpus-per-replica", type=_gpu_share, default=1.0, metavar="G",
                       help="GPUs the replica reserves when it runs on CUDA (--device cuda, or auto on a cluster "
                            "with GPUs); 0.5 puts two replicas on one GPU (default: 1)")
    serve.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    serve.set_defaults(run=run_serve)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    default_model = os.environ.get("TIS_MODEL", DEFAULT_MODEL)
    if several:  # the default is filled in after parsing: argparse would append to a default list
        parser.add_argument("--model", action="append", metavar="[NAME=]MODEL",
                            help="Hugging Face id or local checkpoint folder of a CLIP, SigLIP or SigLIP 2 model "
                                 f"(default: $TIS_MODEL, else {default_model}); repeat it to score with several "
                                 "in one pass, each optionally named (--model b32=DIR): columns then end in _NAME")
    else:
        parser.add_argument("--model", default=default_model,
                            help=f"Hugging Face CLIP id or local checkpoint folder (default: $TIS_MODEL, else "
                                 f"{DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: float16 on CUDA, bfloat16 on CPUs with native bf16, else float32")


def _add_politeness_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ignore-opt-out", action="store_true",
                        help="fetch images whose host sends X-Robots-Tag noai, noimageai, noindex, noimageindex "
                             "or none (only with the site owner's permission)")
    parser.add_argument("--user-agent", default=FetchConfig.user_agent,
                        help=f"User-Agent sent with every request (default: {FetchConfig.user_agent})")


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {value}")
    return value


def _gpu_share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:  # a replica uses one GPU: more would be reserved and left idle
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run_score(args: argparse.Namespace) -> int:
    from .api import retry_errors, score_file  # imports Ray; keep `--help` fast
    from .checkpoint import checkpoint_dir
    from .progress import ProgressLine

    options = dict(
        image_column=args.image_column,
        caption_column=args.caption_column,
        prefix=args.prefix,
        keep_json_fields=args.keep_json_fields,
        model=[(name, ModelConfig(model=model, device=args.device, dtype=args.dtype))
               for name, model in map(split_model_option, args.model or [os.environ.get("TIS_MODEL", DEFAULT_MODEL)])],
        fetch=FetchConfig(max_in_flight=args.fetch_concurrency, timeout_s=args.timeout, retries=args.retries,
                          reduced_decode=not args.full_decode, user_agent=args.user_agent,
                          honor_opt_out=not args.ignore_opt_out),
        pipeline=PipelineConfig(batch_size=args.batch_size, fetch_actors=args.fetch_actors,
                                scorer_actors=args.scorer_actors, with_cosine=args.with_cosine,
                                with_probability=args.with_probability, with_truncation=args.with_truncation,
                                with_embeddings=args.with_embeddings, embedding_dtype=args.embedding_dtype),
        address=args.address,
        progress=args.verbose,
        progress_line=ProgressLine(sys.stderr, terminal=sys.stderr.isatty() and not args.verbose,
                                   every_s=args.progress_every),
    )
    try:
        if args.retry_errors:
            summary = retry_errors(args.input, args.retry_errors, args.output, **options)
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
    if args.report:
        from .report import write_report

        print(f"report: {write_report(args.output)}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .scored_output import parse_fraction

    threshold = None if args.threshold is None else parse_fraction(args.threshold, "--threshold", 0, 1)
    path = write_report(args.scored, args.output, thumbnails=0 if args.no_thumbnails else args.thumbnails,
                        threshold=threshold, image_column=args.image_column, caption_column=args.caption_column)
    print(f"wrote {path}")
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from .filtering import filter_file
    from .scored_output import parse_fraction

    result = filter_file(
        args.scored, args.output, model=args.model, keep_errors=args.keep_errors,
        min_similarity=None if args.min_similarity is None else parse_fraction(
            args.min_similarity, "--min-similarity", 0, 1),
        keep_top=None if args.keep_top is None else parse_fraction(args.keep_top, "--keep-top", 0, 100),
    )
    print(f"wrote {args.output}")
    print(result.format())
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .api import connect
    from .loading import load_preprocess_spec
    from .serve import ServeArgs

    app_args = ServeArgs(model=args.model, device=args.device, dtype=args.dtype, allow_hosts=args.allow_hosts,
                         allowlist_only=args.allowlist_only, allow_ports=args.allow_ports,
                         allow_wide_networks=args.allow_wide_networks, max_pixels=args.max_pixels,
                         ignore_opt_out=args.ignore_opt_out, user_agent=args.user_agent)
    try:
        service_options = app_args.service_options()  # a bad allowlist is one clear line, before Serve starts
    except ValueError as exc:
        raise InputError(str(exc)) from None
    load_preprocess_spec(args.model)  # a bad model is one clear line, before Serve starts
    connect(args.address)
    import ray

    from .pipeline import cluster_capacity
    from .pool_sizing import serve_replica_gpus

    gpus = serve_replica_gpus(args.device, cluster_capacity(ray.cluster_resources()).get("GPU", 0),
                              args.gpus_per_replica)
    _serve_in_foreground(service_options, host=args.host, port=args.port, replica_gpus=gpus,
                         user_config={"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms})
    return 0


def _serve_in_foreground(service_options: dict, *, host: str, port: int, replica_gpus: float,
                         user_config: dict) -> None:
    """Serve on host:port until Ctrl-C or SIGTERM (even during start-up), then shut Serve down."""

    from ray import serve

    from .serve import service_deployment

    def stop(signum, frame) -> None:  # SIGTERM (docker stop, kubectl delete) ends it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(service_deployment(user_config, replica_gpus).bind(**service_options),
                  name="tis-ray", route_prefix="/")
        print(f"tis-ray serving {service_options['model']} at http://{host}:{port} (docs at /docs); Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("tis-ray: shutting down", flush=True)
    finally:
        serve.shutdown()
