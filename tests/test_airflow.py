"""The Airflow DAG as Airflow runs it: a real Airflow 3 (its metadata in SQLite, made here)
runs `score_dag(...)` with `dag.test()` against a real `ray start` head on loopback.

Each run is its own process, as an Airflow worker is: Airflow reads its settings
(home, database, the Ray connection) from the environment when it is first imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, ImageServer, loopback_ray_env
from job_rows import check_scored, read_scored_csv, write_pairs_csv
from jobs import assert_stats_add_up

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

# A DAG file as a user writes one, its settings beside it; run as a script it is `dag.test()`.
DAG_FILE = """
import json
from pathlib import Path

from tis_ray.airflow import score_dag

dag = score_dag(**json.loads(Path(__file__).with_suffix(".json").read_text()))

if __name__ == "__main__":
    print("DAG RUN:", dag.test().state)
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, ray_head):
    """A fresh Airflow home whose SQLite metadata database `airflow db migrate` creates,
    and whose connection ``tis_ray`` points at the head's dashboard."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = loopback_ray_env(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW_CONN_TIS_RAY=ray_head["dashboard"],
    )
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    return env


def run_dag(env: dict, dags: Path, **kwargs) -> str:
    """`dag.test()` of ``score_dag(**kwargs)``, from a DAG file in the folder `dags`, in its own process;
    its log, which ends with the run's state."""
    dags.mkdir()
    (dags / "tis_ray_test.py").write_text(DAG_FILE)
    (dags / "tis_ray_test.json").write_text(json.dumps({"dag_id": dags.parent.name, **kwargs}))
    done = subprocess.run([sys.executable, str(dags / "tis_ray_test.py")], capture_output=True, text=True,
                          env={**env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}, timeout=400)
    return done.stdout + done.stderr


SCORE_ARGS = ["--dtype", "float32", "--timeout", "5"]


def test_a_good_input_succeeds_and_the_retry_step_scores_again_only_retryable_rows(airflow_env, tiny_model,
                                                                                    photos, tmp_path):
    server = ImageServer()  # its own, so that its request log is this test's alone
    rows = [(server.url("flaky/airflow/chelsea.jpg"), "a cat", "chelsea"),  # 500 at first, then the photo
            (server.url("status/404"), "gone", "http_404"),
            (server.url("photo/coffee.jpg"), "a cup of coffee", "coffee"),
            (str(photos["astronaut"]), "an astronaut", "astronaut")]
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "pairs.scored.csv"
    try:  # --retries 0: the first pass keeps the 500 as the row's error
        log = run_dag(airflow_env, tmp_path / "dags", input_path=str(tmp_path / "pairs.csv"), output_path=str(out),
                      model=tiny_model, threshold=0.25, retry_errors=True, score_args=[*SCORE_ARGS, "--retries", "0"],
                      poll_s=1)
    finally:
        server.close()
    assert "DAG RUN: success" in log, log[-5000:]
    assert "errors: 2" in log and "http_500: 1" in log, log[-5000:]  # the first job's summary, streamed in
    assert "error share 25.0% (1 of 4 rows failed" in log, log[-5000:]
    check_scored(read_scored_csv(out), rows, tiny_model, photos)
    assert server.requests.count("/flaky/airflow/chelsea.jpg") == 2  # scored again
    assert server.requests.count("/status/404") == server.requests.count("/photo/coffee.jpg") == 1  # not again
    stats = assert_stats_add_up(out, len(rows))
    assert (stats["mode"], stats["rows_scored_now"]) == ("retry_errors", 1)


def test_an_input_whose_rows_mostly_fail_fails_at_the_threshold(airflow_env, tiny_model, image_server, tmp_path):
    rows = [(image_server.url("status/404"), "gone", "http_404"), (str(tmp_path / "nope.jpg"), "lost", "x"),
            (image_server.url("html"), "a page", "x"), (image_server.url("photo/chelsea.jpg"), "a cat", "chelsea")]
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "pairs.scored.csv"
    log = run_dag(airflow_env, tmp_path / "dags", input_path=str(tmp_path / "pairs.csv"), output_path=str(out),
                  model=tiny_model, threshold=0.5, score_args=SCORE_ARGS, poll_s=1)
    assert "DAG RUN: failed" in log, log[-5000:]
    assert "error share 75.0% (3 of 4 rows failed" in log and "too many rows failed" in log, log[-5000:]
    assert_stats_add_up(out, len(rows))  # the job itself ran to the end; the judging step failed the run


def test_the_shipped_dag_file_parses(airflow_env):
    probe = ("from airflow.dag_processing.dagbag import DagBag; bag = DagBag(dag_folder='deploy/airflow'); "
             "print(bag.import_errors, sorted(bag.dags['tis_ray_score'].task_ids))")
    parsed = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=airflow_env, capture_output=True,
                            text=True, timeout=120)
    assert parsed.stdout.strip().splitlines()[-1] == "{} ['check_errors', 'retry_errors', 'score']", (
        parsed.stdout[-3000:] + parsed.stderr[-3000:])
