"""What `tis-ray score` prints besides its own lines: nothing from Ray in a healthy run
(all of it again with --verbose), one line for a dead local cluster that Ray recorded, and
no error output from a fetch actor's exit. Real subprocesses, real Ray, each in a Ray temp
folder of its own, so that nothing here joins, or leaves a record for, another Ray on this
machine."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PHOTOS, REPO, free_port, loopback_ray_env

from tis_ray import ray_session

PAIRS = REPO / "examples" / "pairs.csv"

# The kinds of line that are not ours, each as it starts on stderr.
NOT_OURS = {
    "a Ray log line (Python logging)": re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ \S+:\d+ -- "),
    "a Ray core log line (C++)": re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] "),
    "output a Ray process passed on": re.compile(r"^(\x1b\[\d+m)?\((\S+ )?pid=|^(\x1b\[\d+m)?\((raylet|autoscaler)"),
    "a Python traceback": re.compile(r"Traceback \(most recent call last\)"),
    "aiohttp's unclosed-resource report": re.compile(r"Unclosed (client session|connector)"),
}


@pytest.fixture
def ray_tmpdir():
    """A Ray temp folder of the test's own ($RAY_TMPDIR; short: Ray's socket paths must fit in 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _user_env(ray_tmpdir: str) -> dict[str, str]:
    """A user's shell: no Ray address, and RAY_AUTH_MODE unset, so that Ray picks its default (token
    mode, with the suite's token) and says so, as it does for a user; Ray's files under `ray_tmpdir`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, "RAY_TMPDIR": ray_tmpdir}


def _score(out: Path, tiny_model: str, env: dict[str, str], *extra: str, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "tis_ray", "score", str(PAIRS), "-o", str(out), "--model", tiny_model,
         "--dtype", "float32", *extra],
        check=False, capture_output=True, text=True, env=env, timeout=timeout,
    )


def _lines_not_ours(stderr: str) -> list[tuple[str, str]]:
    """(the kind it is, the line) for every stderr line that is not one of ours ("tis-ray: ...")."""
    found = []
    for line in stderr.splitlines():
        if line.strip() and not line.startswith("tis-ray: "):
            kind = next((name for name, pattern in NOT_OURS.items() if pattern.search(line)), "not ours")
            found.append((kind, line))
    return found


def test_a_healthy_score_prints_no_ray_line_then_the_summary(tmp_path, tiny_model, ray_tmpdir):
    """The README's first command, with a local checkpoint: its progress line, then the summary."""
    out = tmp_path / "scored.csv"
    result = _score(out, tiny_model, _user_env(ray_tmpdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _lines_not_ours(result.stderr) == []
    assert result.stdout.splitlines()[0] == f"wrote {out}"
    assert "rows: 10" in result.stdout and "scored: 7" in result.stdout


def test_verbose_shows_rays_own_lines_again(tmp_path, tiny_model, ray_tmpdir):
    """The lines a quiet run keeps back are Ray's real ones, and --verbose lets them through."""
    result = _score(tmp_path / "scored.csv", tiny_model, _user_env(ray_tmpdir), "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = {kind for kind, _ in _lines_not_ours(result.stderr)}
    assert {"a Ray log line (Python logging)", "a Ray core log line (C++)"} <= kinds, result.stderr[-3000:]
    assert ray_session.AUTH_DEFAULT_NOTICE in result.stderr
    assert ray_session.ACTOR_ARGUMENT_WARNING.search(result.stderr)
    assert "Starting execution of Dataset" in result.stderr  # Ray Data's own log lines


def test_a_dead_recorded_cluster_is_one_line_then_a_fresh_local_ray(tmp_path, tiny_model, ray_tmpdir):
    """A `ray start --head` killed outright leaves its address recorded, which a bare ray.init()
    retries for minutes; the job says so in one line and runs on a local Ray of its own."""
    record = Path(ray_tmpdir) / "ray" / "ray_current_cluster"
    gcs = free_port()
    with open(tmp_path / "ray-start.log", "w") as log:
        head = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=false", "--num-cpus=1",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir={record.parent}", "--disable-usage-stats"],
            env=loopback_ray_env(RAY_TMPDIR=ray_tmpdir), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not (record.exists() and _accepts(gcs)):
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "ray-start.log").read_text()
            time.sleep(1)
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the whole head at once, as a crash or `kill -9` ends it
        head.wait()
    assert record.read_text().strip() == f"127.0.0.1:{gcs}" and not _accepts(gcs)

    out = tmp_path / "scored.csv"
    # A bare ray.init() was still retrying the dead address after 200 s here; a run with a fresh
    # local Ray takes well under half of this.
    result = _score(out, tiny_model, _user_env(ray_tmpdir), timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for _, line in _lines_not_ours(result.stderr)] == [
        (f"the local Ray cluster recorded in {record} (127.0.0.1:{gcs}) does not answer; starting a new local "
         "Ray (`ray stop`, or deleting that file, forgets it)")]
    assert "rows: 10" in result.stdout and out.exists()


def test_the_recorded_cluster_is_joined_only_while_it_answers(monkeypatch, ray_tmpdir, caplog):
    """What a bare ray.init() is given: nothing (Ray joins the recorded cluster, or starts one
    where none is recorded), or "local" once nothing accepts connections at the recorded address."""
    monkeypatch.setenv("RAY_TMPDIR", ray_tmpdir)
    record = Path(ray_tmpdir) / "ray" / "ray_current_cluster"
    assert ray_session._local_address() is None  # nothing recorded
    record.parent.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        record.write_text(address)
        with caplog.at_level(logging.WARNING, logger=ray_session.__name__):
            assert ray_session._local_address() is None
        assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger=ray_session.__name__):
        assert ray_session._local_address() == "local"
    assert [r.getMessage() for r in caplog.records] == [
        (f"the local Ray cluster recorded in {record} ({address}) does not answer; starting a new local Ray "
         "(`ray stop`, or deleting that file, forgets it)")]


def test_a_fetch_stage_closes_its_session_before_its_process_exits(tmp_path):
    """A fetch actor's process ends with its event loop still running in a daemon thread (Ray
    exits a job's actors); the stage's HTTP session is closed before that thread stops, and the
    exit prints nothing."""
    # The check is registered first: exit handlers run last-registered first, so it runs after
    # the one weakref.finalize registers when any finalizer is first made.
    script = f"""
import atexit
sessions = []
atexit.register(lambda: print("closed at exit:", [s.closed for s in sessions]))

import asyncio, threading
import pyarrow as pa
from tis_ray.config import FetchConfig
from tis_ray.fetch_stage import FetchStage
from tis_ray.preprocess import PreprocessSpec

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
stage = FetchStage("image", "caption", {str(PHOTOS)!r}, FetchConfig(), (PreprocessSpec(),))
batch = pa.table({{"image": ["chelsea.jpg"], "caption": ["a cat"]}})
asyncio.run_coroutine_threadsafe(stage(batch), loop).result(timeout=60)
sessions.append(stage.preparer.fetcher.session)
print("open before exit:", [not s.closed for s in sessions])
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["open before exit: [True]", "closed at exit: [True]"]
    assert result.stderr == ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False
