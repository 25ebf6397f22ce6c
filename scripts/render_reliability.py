"""Render the measured tables of docs/reliability.md from the figures the tests wrote.

    TIS_FIGURES_DIR=docs/figures python -m pytest tests/test_resume.py tests/test_actor_faults.py \
        tests/test_serve_load.py
    python scripts/render_reliability.py docs/figures docs/reliability.md

Each table sits between ``<!-- figures: NAME -->`` and ``<!-- /figures: NAME -->``;
only what is between the markers is replaced, so the prose around it stays as written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| measured | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _source(figures: dict, name: str) -> str:
    return f"_From `{name}.json`: {figures['machine']}, {figures['date']}._"


def actor_faults(f: dict) -> list[tuple[str, object]]:
    rows = [("rows in / rows out", f"{f['rows_in']} / {f['rows_out']}")]
    rows += [(f"{fault['stage']} worker killed (SIGKILL)", f"at {fault['rows_checkpointed_when_killed']} rows "
              "durable; restarted by Ray, job finished") for fault in f["faults"]]
    rows.append(("output identical to an unfaulted run", "yes" if f["identical_to_unfaulted_run"] else "no"))
    return rows


def resume(f: dict) -> list[tuple[str, object]]:
    return [
        ("rows in / rows out", f"{f['rows_in']} / {f['rows_out']}"),
        ("interrupts", " then ".join(f["interrupts"])),
        ("rows durable after SIGINT / after SIGKILL", f"{f['rows_durable_after_sigint']} / "
                                                      f"{f['rows_durable_after_sigkill']}"),
        ("rows fetched by the last --resume", f["rows_fetched_by_last_resume"]),
        ("output byte-identical to an uninterrupted run", "yes" if f["byte_identical_to_uninterrupted"] else "no"),
    ]


def retry_errors(f: dict) -> list[tuple[str, object]]:
    return [
        ("rows in / rows out", f"{f['rows_in']} / {f['rows_out']}"),
        ("rows failed in the first run / retryable", f"{f['failed_first']} / {f['retryable']}"),
        ("requests sent by --retry-errors", f["refetched"]),
        ("rows recovered / other rows unchanged", f"{f['recovered']} / {f['other_rows_unchanged']}"),
    ]


def _load_shape(f: dict) -> list[tuple[str, object]]:
    return [
        ("requests, concurrency", f"{f['requests']}, {f['concurrency']}"),
        ("limits (max_ongoing / max_queued)", f"{f['max_ongoing_requests']} / {f['max_queued_requests']}"),
    ]


def serve_load(f: dict) -> list[tuple[str, object]]:
    return _load_shape(f) + [
        ("answered 200 with a valid ScoreResponse", f["ok"]),
        ("p50 / p99 latency", f"{f['p50_ms']} ms / {f['p99_ms']} ms"),
        ("throughput", f"{f['requests_per_s']} requests/s"),
    ]


def serve_overload(f: dict) -> list[tuple[str, object]]:
    return _load_shape(f) + [
        ("200 / 503", f"{f['ok']} / {f['shed_503']}"),
        ("p99 latency", f"{f['p99_ms']} ms"),
    ]


def serve_replica_kill(f: dict) -> list[tuple[str, object]]:
    return [
        ("requests sent while the replica was killed", f"{f['requests_during']} (killed after {f['killed_after']})"),
        ("200 / 500 / 503 / malformed (during the load, then until the first 200)",
         f"{f['ok']} / {f['failed_500']} / {f['shed_503']} / {f['malformed']}"),
        ("first 200 after the load ended", f"{f['seconds_to_recover_after_load']} s"),
        ("requests after recovery answered 200", f["requests_after_recovery_ok"]),
    ]


RENDERERS = {fn.__name__: fn for fn in (actor_faults, resume, retry_errors, serve_load, serve_overload,
                                        serve_replica_kill)}


def render(doc: str, figures_dir: Path) -> str:
    for name, renderer in RENDERERS.items():
        figures = json.loads((figures_dir / f"{name}.json").read_text())
        body = f"{_table(renderer(figures))}\n\n{_source(figures, name)}"
        block = f"<!-- figures: {name} -->\n{body}\n<!-- /figures: {name} -->"
        pattern = re.compile(rf"<!-- figures: {name} -->.*?<!-- /figures: {name} -->", re.S)
        if not pattern.search(doc):
            raise SystemExit(f"no <!-- figures: {name} --> markers in the document")
        doc = pattern.sub(lambda _, block=block: block, doc)
    return doc


def main(argv: list[str]) -> int:
    figures_dir, doc_path = Path(argv[0]), Path(argv[1])
    doc_path.write_text(render(doc_path.read_text(), figures_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
