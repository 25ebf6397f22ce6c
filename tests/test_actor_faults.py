"""Actor faults in a real batch run: the worker processes of a fetch actor and of a scorer
actor are killed (SIGKILL) part-way. Ray Data restarts actors and retries their tasks
(its defaults: ``max_restarts=-1``, ``max_task_retries=-1``), so the job must finish with
every row exactly once, identical to an unfaulted run. Real local Ray, real HTTP on
127.0.0.1, the tiny CLIP."""

from __future__ import annotations

import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import ray._private.state  # the GCS actor table; the state API needs a dashboard this Ray does not run

from conftest import ImageServer
from figures import record_figures
from jobs import assert_stats_add_up
from tis_ray import score_file
from tis_ray.checkpoint import checkpoint_dir
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig

ROWS = 128
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
WAIT_S = 180


@pytest.fixture(scope="module")
def server():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory, server):
    path = tmp_path_factory.mktemp("faults") / "pairs.csv"
    rows = [(str(i), server.url(f"paced/{i}/{PHOTOS[i % 4]}.jpg"), f"photo {i}: {PHOTOS[i % 4]}") for i in range(ROWS)]
    pacsv.write_csv(pa.table(dict(zip(["row", "image_url", "caption"], map(list, zip(*rows))))), path)
    return path


def _score(source, output, tiny_model) -> None:
    """One fetch at a time through one fetch actor, a durable part per scored block: a paced
    server then makes the run slow enough to fault part-way, and the parts show progress."""
    score_file(str(source), str(output), model=ModelConfig(model=tiny_model, device="cpu", dtype="float32"),
               fetch=FetchConfig(max_in_flight=1), checkpoint_every_s=0, progress=False,
               pipeline=PipelineConfig(batch_size=8, fetch_batch_size=8, fetch_actors=1, scorer_actors=1))


def _map_worker(stage: str) -> tuple[str, int] | None:
    """(actor id, pid) of this Ray's live Ray Data actor running `stage` ("MapWorker(MapBatches(<stage>))")."""
    for actor_id, info in ray._private.state.actors().items():
        if f"({stage})" in info["ActorClassName"] and info["State"] == "ALIVE" and info["Pid"]:
            return actor_id, info["Pid"]
    return None


def _wait_for(condition, what: str, job: threading.Thread):
    deadline = time.monotonic() + WAIT_S
    while not (found := condition()):
        assert job.is_alive(), f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)
    return found


def _rows_done(output) -> int:
    folder = checkpoint_dir(str(output))
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return max((int(n.split("-")[2].split(".")[0]) for n in names if n.startswith("part-") and n.endswith(".parquet")),
               default=0)


def _kill_and_see_it_restart(stage: str, output, job: threading.Thread) -> dict:
    """SIGKILL the stage's worker process once the run has made progress; wait for Ray to restart it."""
    before = _rows_done(output)
    _wait_for(lambda: _rows_done(output) > before, f"progress before killing {stage}", job)
    actor_id, pid = _wait_for(lambda: _map_worker(stage), f"live {stage} actor", job)
    rows_done = _rows_done(output)
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: (info := ray._private.state.actors().get(actor_id)) and info["NumRestarts"] >= 1
              and info["State"] == "ALIVE", f"restart of {stage}", job)
    return {"stage": stage, "rows_checkpointed_when_killed": rows_done}


def test_killed_fetch_and_scorer_actors_cost_no_row(local_ray, server, source, tiny_model, tmp_path):
    unfaulted = tmp_path / "unfaulted.csv"
    _score(source, unfaulted, tiny_model)

    faulted = tmp_path / "faulted.csv"
    failure: list[BaseException] = []

    def run():
        try:
            _score(source, faulted, tiny_model)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    server.pace_s = 0.05
    job = threading.Thread(target=run, daemon=True)
    job.start()
    try:
        faults = [_kill_and_see_it_restart("FetchStage", faulted, job),
                  _kill_and_see_it_restart("ScoreStage", faulted, job)]
    finally:
        server.pace_s = 0.0
        job.join(WAIT_S)
    assert not job.is_alive() and not failure, failure
    assert all(0 < f["rows_checkpointed_when_killed"] < ROWS for f in faults), faults
    assert faulted.read_bytes() == unfaulted.read_bytes()
    stats = assert_stats_add_up(faulted, ROWS)
    record_figures("actor_faults", {"rows_in": ROWS, "rows_out": stats["rows"], "faults": faults,
                                    "identical_to_unfaulted_run": True})
