"""JobSummary: counts from result rows, and the start-up vs steady-state split of its rate."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tis_ray import summary as summary_module
from tis_ray.columns import RUNTIME, TRUNCATED
from tis_ray.summary import JobSummary


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(errors: list[str | None], runtime: str | None = "cpu/float32") -> pa.Table:
    return pa.table({"error": pa.array(errors, pa.string()), TRUNCATED: pa.array([False] * len(errors)),
                     RUNTIME: pa.array([runtime] * len(errors), pa.string())})


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(summary_module.time, "monotonic", fake)
    return fake


def test_start_up_is_the_time_until_the_first_rows_arrive(clock):
    job = JobSummary(model="m", started=clock.now)
    job.carried_over = 4  # rows a checkpoint held: counted, but not part of this run's rate
    clock.now += 10.0
    job.arrived(2)
    clock.now += 4.0
    job.arrived(8)
    job.add(rows([None] * 4, runtime=None))
    job.add(rows([None, "timeout: slow"]))
    job.add(rows([None] * 8))
    assert job.first_rows_seconds == pytest.approx(10.0) and job.first_rows == 2
    assert job.seconds == pytest.approx(14.0)
    assert job.steady_pairs_per_second == pytest.approx(8 / 4.0)
    assert job.pairs_per_second == pytest.approx(10 / 14.0)
    stats = job.stats(input_path="in.csv", output_path="out.csv", mode="resumed")
    assert stats["seconds_to_first_rows"] == 10.0 and stats["steady_pairs_per_second"] == 2.0
    assert stats["rows"] == 14 and stats["outcomes"] == {"scored": 13, "error": 1}


def test_no_steady_rate_before_a_second_batch(clock):
    job = JobSummary(model="m", started=clock.now)
    assert job.steady_pairs_per_second is None
    clock.now += 3.0
    job.arrived(3)
    job.add(rows([None] * 3))
    assert job.steady_pairs_per_second is None
