"""tis-ray in Apache Airflow 3: a DAG that scores a file on a Ray cluster and judges the result.

`score_dag(...)` builds the DAG (TaskFlow for the judging step); `deploy/airflow/` has a
ready DAG file that calls it. The work itself runs on the Ray cluster as a Ray job,
submitted with Ray's own job SDK (`ray.job_submission.JobSubmissionClient`), so an
Airflow worker needs no GPU, no model and no torch import: it submits ``python -m
tis_ray score ...`` and then hands the wait to Airflow's triggerer (a deferrable
operator), which frees the worker slot and streams the job's log into the task log
until the job ends. The judging step reads ``OUTPUT.stats.json`` and fails the run when
the share of rows that failed is above the threshold; ``retry_errors`` first runs
``--retry-errors`` once, so rows that failed for a passing reason (timeouts, 5xx, 429)
get a second chance before they count.

The cluster's address is the Airflow connection ``ray_conn_id`` (type http or https,
host and port of the Ray dashboard, e.g. ``AIRFLOW_CONN_TIS_RAY=http://head:8265``),
else the Airflow variable ``address_variable``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shlex
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from .extras import require

require("airflow.sdk", "airflow", "tis_ray.airflow")

from airflow.sdk import DAG, BaseOperator, Connection, Variable, dag, task  # noqa: E402
from airflow.sdk.exceptions import (  # noqa: E402
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent  # noqa: E402
from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

from . import storage  # noqa: E402
from .config import DEFAULT_MODEL  # noqa: E402
from .output import stats_path  # noqa: E402

RAY_CONN_ID = "tis_ray"
ADDRESS_VARIABLE = "tis_ray_address"
POLL_S = 5.0  # how often the trigger asks for the job's status once its log stream has ended


def ray_address(conn_id: str = RAY_CONN_ID, variable: str = ADDRESS_VARIABLE) -> str:
    """The Ray dashboard's URL: from the Airflow connection `conn_id`, else the variable `variable`."""
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        address = Variable.get(variable, default=None)
        if not address:
            raise AirflowFailException(
                f"no Ray address: set the Airflow connection {conn_id!r} (http://HEAD:8265) "
                f"or the variable {variable!r}") from None
        return address
    scheme = "https" if conn.conn_type == "https" else "http"
    return f"{scheme}://{conn.host}:{conn.port or 8265}"


def score_command(input_path: str, output_path: str, model: str, args: Sequence[str] = (),
                  retry_errors: bool = False) -> str:
    """The job's entrypoint: ``tis-ray score`` as the cluster's Python runs it."""
    command = ["python", "-m", "tis_ray", "score", input_path, "-o", output_path, "--model", model, *args]
    if retry_errors:
        command += ["--retry-errors", output_path]
    return shlex.join(command)


class RayJobTrigger(BaseTrigger):
    """Runs in Airflow's triggerer: streams a Ray job's log into the task log, then reports how it ended."""

    def __init__(self, address: str, job_id: str, poll_s: float = POLL_S):
        super().__init__()
        self.address, self.job_id, self.poll_s = address, job_id, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "address": self.address, "job_id": self.job_id, "poll_s": self.poll_s}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = await asyncio.to_thread(JobSubmissionClient, self.address)  # checks the cluster: blocking I/O
        try:
            async for chunk in client.tail_job_logs(self.job_id):
                for line in chunk.splitlines():
                    self.log.info("%s", line)
        except RuntimeError as exc:  # the stream broke; the job's status still tells how it ended
            self.log.warning("the job's log stream ended early (%s); waiting for its status", exc)
        while not (status := await asyncio.to_thread(client.get_job_status, self.job_id)).is_terminal():
            await asyncio.sleep(self.poll_s)
        yield TriggerEvent({"job_id": self.job_id, "status": status.value})


class TisRayScoreOperator(BaseOperator):
    """Submits ``tis-ray score`` (or ``--retry-errors``) as a Ray job and defers until it ends.

    The submission happens on a worker; the wait, with the job's log, on the triggerer.
    A job that does not succeed fails the task with Ray's own reason for it.
    """

    template_fields = ("input_path", "output_path", "model")

    def __init__(self, *, input_path: str, output_path: str, model: str = DEFAULT_MODEL,
                 score_args: Sequence[str] = (), retry_errors: bool = False,
                 runtime_env: dict | None = None, ray_conn_id: str = RAY_CONN_ID,
                 address_variable: str = ADDRESS_VARIABLE, poll_s: float = POLL_S, **kwargs):
        super().__init__(**kwargs)
        self.input_path, self.output_path, self.model = input_path, output_path, model
        self.score_args, self.retry_errors = list(score_args), retry_errors
        self.runtime_env = runtime_env
        self.ray_conn_id, self.address_variable, self.poll_s = ray_conn_id, address_variable, poll_s

    def execute(self, context) -> None:
        address = ray_address(self.ray_conn_id, self.address_variable)
        entrypoint = score_command(self.input_path, self.output_path, self.model, self.score_args,
                                   self.retry_errors)
        job_id = JobSubmissionClient(address).submit_job(entrypoint=entrypoint, runtime_env=self.runtime_env)
        self.log.info("submitted Ray job %s to %s: %s", job_id, address, entrypoint)
        self.defer(trigger=RayJobTrigger(address, job_id, self.poll_s), method_name="finish")

    def finish(self, context, event: dict) -> str:
        job_id, status = event["job_id"], event["status"]
        if status != JobStatus.SUCCEEDED.value:
            address = ray_address(self.ray_conn_id, self.address_variable)
            message = JobSubmissionClient(address).get_job_info(job_id).message
            raise AirflowException(f"Ray job {job_id} {status.lower()}: {message}")
        self.log.info("Ray job %s succeeded", job_id)
        return job_id


def read_stats(output_path: str) -> dict:
    """``OUTPUT.stats.json``, from a local path or a bucket (s3://, gs://) the worker can read."""
    filesystem, inner = storage.resolve(stats_path(output_path))
    with filesystem.open_input_stream(inner) as stream:
        return json.loads(stream.read())


def judge(stats: dict, threshold: float) -> str:
    """The verdict on a finished job; `AirflowFailException` when its error share is above `threshold`."""
    rows, failed = stats["rows"], stats["outcomes"]["error"]
    share = failed / rows if rows else 0.0
    verdict = (f"error share {share:.1%} ({failed} of {rows} rows failed; by kind: "
               f"{json.dumps(stats['errors_by_kind'])}), threshold {threshold:.1%}")
    if share > threshold:
        raise AirflowFailException(f"{verdict}: too many rows failed")
    return verdict


def score_dag(
    *,
    dag_id: str = "tis_ray_score",
    input_path: str,
    output_path: str,
    model: str = DEFAULT_MODEL,
    threshold: float = 0.05,
    schedule: Any = None,
    retry_errors: bool = False,
    score_args: Sequence[str] = (),
    runtime_env: dict | None = None,
    ray_conn_id: str = RAY_CONN_ID,
    address_variable: str = ADDRESS_VARIABLE,
    start_date: datetime = datetime(2026, 1, 1),
    poll_s: float = POLL_S,
) -> DAG:
    """The DAG: ``score`` [``>> retry_errors``] ``>> check_errors``.

    `threshold` is the largest share of failed rows (0.05: 5 %) a run may end with.
    `score_args` are more ``tis-ray score`` options (``["--device", "cuda"]``); `runtime_env`
    is the Ray job's (``{"env_vars": {...}}``, a ``working_dir``, pip packages).
    """
    job = dict(input_path=input_path, output_path=output_path, model=model, score_args=score_args,
               runtime_env=runtime_env, ray_conn_id=ray_conn_id, address_variable=address_variable,
               poll_s=poll_s)

    @dag(dag_id=dag_id, schedule=schedule, start_date=start_date, catchup=False, tags=["tis-ray"],
         doc_md=__doc__)
    def tis_ray_score():
        @task
        def check_errors(output: str) -> dict:  # the output path as templated for this run
            stats = read_stats(output)
            print(judge(stats, threshold))
            return stats

        steps = [TisRayScoreOperator(task_id="score", **job)]
        if retry_errors:
            steps.append(TisRayScoreOperator(task_id="retry_errors", retry_errors=True, **job))
        for before, after in itertools.pairwise(steps):
            before >> after
        steps[-1] >> check_errors(output_path)

    return tis_ray_score()
