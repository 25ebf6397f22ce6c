"""Actor faults in a real batch run: the worker processes of the fetch actor and of the
scorer actor are killed (SIGKILL) part-way, together. Ray Data restarts actors and retries their tasks
(its defaults: ``max_restarts=-1``, ``max_task_retries=-1``), so the job must finish with
every row exactly once, identical to an unfaulted run. Real local Ray, real HTTP on
127.0.0.1, the tiny CLIP."""

from __future__ import annotations

import os
import signal
import threading
import time

import ray._private.state  # the GCS actor table; the state API needs a dashboard this Ray does not run
from figures import record_figures
from jobs import assert_stats_add_up, rows_durable

from tis_ray import score_file
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig

WAIT_S = 180
STAGES = ("FetchStage", "ScoreStage")


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


def _kill_both_and_see_them_restart(output, job: threading.Thread) -> list[dict]:
    """Once rows are durable, SIGKILL the fetch and the scorer worker processes; wait for Ray to restart both."""
    _wait_for(lambda: rows_durable(output) > 0, "progress before the kills", job)
    victims = {stage: _wait_for(lambda stage=stage: _map_worker(stage), f"live {stage} actor", job) for stage in STAGES}
    rows_done = rows_durable(output)
    for _, pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    for stage, (actor_id, _) in victims.items():
        _wait_for(lambda actor_id=actor_id: (info := ray._private.state.actors().get(actor_id))
                  and info["NumRestarts"] >= 1
                  and info["State"] == "ALIVE", f"restart of {stage}", job)
    return [{"stage": stage, "rows_checkpointed_when_killed": rows_done} for stage in STAGES]


def test_killed_fetch_and_scorer_actors_cost_no_row(local_ray, paced_job, tiny_model, tmp_path):
    source, server, rows = paced_job.source, paced_job.server, paced_job.rows
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
        faults = _kill_both_and_see_them_restart(faulted, job)
    finally:
        server.pace_s = 0.0
        job.join(WAIT_S)
    assert not job.is_alive() and not failure, failure
    assert all(0 < f["rows_checkpointed_when_killed"] < rows for f in faults), faults
    assert faulted.read_bytes() == paced_job.uninterrupted
    stats = assert_stats_add_up(faulted, rows)
    record_figures("actor_faults", {"rows_in": rows, "rows_out": stats["rows"], "faults": faults,
                                    "identical_to_unfaulted_run": True})
