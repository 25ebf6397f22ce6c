"""Every fault case through the batch path and the Serve endpoint: same outcome, nothing lost, no hang.

One `score_file` run holds all the cases (rows in = rows out, in order, input columns
untouched); one request to a real Serve app holds them all again; the CLI runs the
caption cases, where CSV quoting matters. Scores are checked against the
transformers reference, and Serve's against the batch's. Each case is also prepared
alone, as a fetch actor prepares it, to bound its own time.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
import urllib.request
from dataclasses import replace

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import free_port
from jobs import assert_stats_add_up
from reference import reference_similarities
from test_cli import run_cli
from transformers import AutoTokenizer

from tis_ray import score_file
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig
from tis_ray.errors import RowError, error_kind
from tis_ray.loading import load_preprocess_spec
from tis_ray.netguard import AddressPolicy
from tis_ray.prepare import ImagePreparer
from tis_ray.serve import ScoringService
from tis_ray.sources import classify_image_ref

from .cases import CASES, FaultCase, FaultServers
from .report import CaseFigures, Outcome, Run, write_report

FETCH = FetchConfig(timeout_s=2.0, retries=1, backoff_s=0.05, retry_after_cap_s=1.0, max_bytes=1_000_000)
HANG_BOUND_S = FETCH.timeout_s + 1.5  # a case that hangs must end by then (a hang bound, not a benchmark)
# One case alone: the deadline (its retries and Retry-After waits included), room for a
# host's back-off waited before the deadline starts, then decoding. A bound on hangs,
# not a benchmark.
CASE_BOUND_S = FETCH.retry_after_cap_s + FETCH.timeout_s + 1.5
RUN_BOUND_S = 180  # the whole batch run, actor start-up included
COLUMNS = ["id", "image_url", "caption", "note"]
SCORED = [c for c in CASES if c.expect is None]


def write_cases_csv(path, cases: list[FaultCase], servers: FaultServers, run: str) -> list[list[str]]:
    rows = [[f"{i:03d}", c.image_cell(servers, run), c.caption, f"{c.name}, note {i}"] for i, c in enumerate(cases)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return rows


def read_scored_csv(path) -> pa.Table:
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={**{c: pa.string() for c in COLUMNS}, "error": pa.string(), "similarity": pa.float64()},
            strings_can_be_null=False,
        ),
    )


def outcomes_of(cases: list[FaultCase], errors: list[str | None], sims: list[float | None]) -> dict[str, Outcome]:
    return {c.name: Outcome(error_kind(e), s, e or None) for c, e, s in zip(cases, errors, sims)}


@pytest.fixture(scope="module")
def model(tiny_model) -> ModelConfig:
    return ModelConfig(model=tiny_model, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def batch_run(local_ray, model, fault_servers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults-batch")
    rows = write_cases_csv(folder / "cases.csv", list(CASES), fault_servers, "batch")
    started = time.monotonic()
    score_file(str(folder / "cases.csv"), str(folder / "scored.csv"), model=model, fetch=FETCH,
               pipeline=PipelineConfig(batch_size=16), progress=False)
    seconds = time.monotonic() - started
    table = read_scored_csv(folder / "scored.csv")
    run = Run("batch (`score_file`)", len(rows), table.num_rows, seconds,
              outcomes_of(list(CASES), table.column("error").to_pylist(), table.column("similarity").to_pylist()),
              json.loads((folder / "scored.csv.stats.json").read_text()))
    return run, rows, table, folder / "scored.csv"


@pytest.fixture(scope="module")
def serve_run(local_ray, model, fault_servers) -> Run:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(ScoringService.options(ray_actor_options={"num_cpus": 0.25}).bind(
            model=model.model, device="cpu", dtype="float32", fetch=FETCH,
            policy=AddressPolicy(("127.0.0.1",), ports=None)),  # the fault servers' ports are random
            name="faults", route_prefix="/faults")
        payload = {"pairs": [{"image_url": c.image_cell(fault_servers, "serve"), "caption": c.caption} for c in CASES]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/faults/v1/score", json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            results = json.loads(response.read())["results"]
        seconds = time.monotonic() - started
    finally:
        serve.shutdown()
    return Run("Serve (one request)", len(CASES), len(results), seconds,
               outcomes_of(list(CASES), [r["error"] for r in results], [r["similarity"] for r in results]))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, local_ray, tiny_model, fault_servers):
    """`tis-ray score` on the caption cases, where CSV quoting matters, joined to the session's Ray."""
    cases = [c for c in CASES if c.group == "caption"]
    folder = tmp_path_factory.mktemp("faults-cli")
    rows = write_cases_csv(folder / "captions.csv", cases, fault_servers, "cli")
    started = time.monotonic()
    result = run_cli("score", str(folder / "captions.csv"), "-o", str(folder / "scored.csv"), "--model", tiny_model,
                     "--device", "cpu", "--dtype", "float32", "--timeout", "2", "--retries", "1",
                     env={"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_scored_csv(folder / "scored.csv")
    run = Run("CLI (`tis-ray score`, caption cases)", len(rows), table.num_rows, seconds,
              outcomes_of(cases, table.column("error").to_pylist(), table.column("similarity").to_pylist()),
              json.loads((folder / "scored.csv.stats.json").read_text()))
    return run, rows, table, result.stdout, folder / "scored.csv"


@pytest.fixture(scope="module")
def alone_s(fault_servers, model) -> dict[str, float]:
    """Seconds each case takes through `ImagePreparer` (a fetch actor's fetch, decode and crop).

    All cases start at once, each timed on its own; the per-host cap is lifted so that no
    case waits in its host's queue, which comes before the deadline by design.
    """
    preparer = ImagePreparer(replace(FETCH, per_host_limit=len(CASES)), (load_preprocess_spec(model.model),))

    async def timed(case: FaultCase) -> float:
        started = time.monotonic()
        try:
            await preparer.from_source(classify_image_ref(case.image_cell(fault_servers, "alone"), "."))
        except RowError:
            pass
        return time.monotonic() - started

    async def all_cases() -> list[float]:
        try:
            return await asyncio.gather(*(timed(c) for c in CASES))
        finally:
            await preparer.close()

    return dict(zip((c.name for c in CASES), asyncio.run(all_cases())))


@pytest.fixture(scope="module")
def reference(tiny_model) -> dict[str, float]:
    sims = reference_similarities(tiny_model, [c.asset.visible for c in SCORED], [c.caption for c in SCORED])
    return dict(zip((c.name for c in SCORED), sims))


def stayed_s(servers: FaultServers, case: FaultCase, run: str) -> list[float]:
    """How long clients stayed on this case's never-finished replies; waits briefly for the record."""
    deadline = time.monotonic() + 5
    while not servers.main.hang_s[f"{run}/{case.route}"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(servers.main.hang_s[f"{run}/{case.route}"])


@pytest.fixture(scope="module", autouse=True)
def report(batch_run, serve_run, cli_run, alone_s, fault_servers):
    """After the module's tests: the figures, written where ``TIS_FAULT_REPORT`` says (or a temp folder)."""
    yield
    batch = batch_run[0]
    figures = [
        CaseFigures(c.name, c.group, c.does, c.expect, batch.outcomes[c.name], serve_run.outcomes[c.name],
                    {run: c.server(fault_servers).requests(run, c.route) for run in ("batch", "serve")}
                    if c.behaviour is not None else {},
                    {run: stayed_s(fault_servers, c, run) for run in ("batch", "serve")} if c.hangs else {},
                    alone_s[c.name])
        for c in CASES
    ]
    folder = write_report(figures, [batch, serve_run, cli_run[0]], FETCH.timeout_s, HANG_BOUND_S, CASE_BOUND_S)
    print(f"\nfault report: {folder}/faults.md and faults.json")


def test_every_row_comes_out_once_in_order_untouched(batch_run):
    run, rows, table, _ = batch_run
    assert run.rows_out == run.rows_in == len(CASES)
    for i, name in enumerate(COLUMNS):
        assert table.column(name).to_pylist() == [row[i] for row in rows], name
    assert run.seconds < RUN_BOUND_S


def test_serve_answers_every_pair_in_order(serve_run):
    assert serve_run.rows_out == serve_run.rows_in == len(CASES)
    # All pairs are fetched at once: the slowest case (a 429 back-off, then a whole timeout)
    # bounds the request. A hang bound with room for scoring, not a benchmark.
    assert serve_run.seconds < FETCH.retry_after_cap_s + FETCH.timeout_s + 15


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_batch_and_serve_give_the_documented_outcome(case, batch_run, serve_run, reference):
    batch, online = batch_run[0].outcomes[case.name], serve_run.outcomes[case.name]
    assert batch.kind == case.expect, batch.error
    assert online.kind == case.expect, online.error
    if case.expect is None:
        assert abs(batch.similarity - reference[case.name]) <= 1e-4, (batch.similarity, reference[case.name])
        assert abs(online.similarity - batch.similarity) <= 1e-4, (online.similarity, batch.similarity)
    else:
        assert batch.similarity is None and online.similarity is None
        for error in (batch.error, online.error):
            assert "Traceback" not in error and len(error) < 1000, error


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_alone_ends_within_its_bound(case, alone_s):
    assert alone_s[case.name] <= CASE_BOUND_S, alone_s[case.name]


def test_stats_files_account_for_every_case(batch_run, cli_run, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context = tokenizer.model_max_length

    def cut(cases):  # scored cases whose caption is over the model's context, counted by the reference tokenizer
        return sum(1 for c in cases if c.expect is None and len(tokenizer(c.caption)["input_ids"]) > context)

    for output, cases in ((batch_run[3], list(CASES)), (cli_run[4], [c for c in CASES if c.group == "caption"])):
        stats = assert_stats_add_up(output, len(cases))
        assert stats["truncated_captions"] == cut(cases) > 0, stats


@pytest.mark.parametrize("case", [c for c in CASES if c.requests is not None], ids=lambda c: c.name)
def test_retries_are_as_documented(case, batch_run, serve_run, fault_servers):
    server = case.server(fault_servers)
    assert server.requests("batch", case.route) == case.requests
    assert server.requests("serve", case.route) == case.requests


@pytest.mark.parametrize("case", [c for c in CASES if c.hangs], ids=lambda c: c.name)
def test_a_server_that_never_finishes_is_left_at_the_timeout(case, batch_run, serve_run, fault_servers):
    for run in ("batch", "serve"):
        stays = stayed_s(fault_servers, case, run)
        assert stays, f"the {run} client never left {case.name}"
        assert max(stays) <= HANG_BOUND_S, (run, stays)
        assert min(stays) >= FETCH.timeout_s - 0.5, (run, stays)  # it was the timeout that ended it


def test_urls_reach_the_server_as_written(batch_run, serve_run, fault_servers):
    assert fault_servers.main.unknown == [] and fault_servers.strict.unknown == []


def test_cli_keeps_every_caption_byte_for_byte(cli_run, reference):
    run, rows, table, stdout, _ = cli_run
    cases = [c for c in CASES if c.group == "caption"]
    assert run.rows_out == run.rows_in == len(cases)
    assert table.column("caption").to_pylist() == [row[2] for row in rows]
    assert table.column("id").to_pylist() == [row[0] for row in rows]
    for case in cases:
        outcome = run.outcomes[case.name]
        assert outcome.kind == case.expect, (case.name, outcome.error)
        if case.expect is None:
            assert abs(outcome.similarity - reference[case.name]) <= 1e-4, case.name
    assert f"rows: {len(cases)}" in stdout
    assert f"scored: {sum(1 for c in cases if c.expect is None)}" in stdout

