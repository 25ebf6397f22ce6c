"""Joining Ray for a job, with Ray's console output kept to what a user can act on.

A healthy `tis-ray score` used to open with Ray lines its user could do nothing about:
Ray's notice that token authentication is on by default, and Ray core's ERROR line about
actor constructor arguments in the object store. `connect` keeps them off the console
unless `verbose` asks for all of Ray's output (`tis-ray score --verbose`,
``score_file(progress=True)``), and `show_progress` does the same for Ray Data's bars and
per-operator lines. Our own warnings are never filtered: they come from the ``tis_ray``
loggers, which nothing here touches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator

import ray
from ray.data import DataContext

logger = logging.getLogger(__name__)

# How long a recorded local cluster's GCS port has to accept a connection. A live GCS on this
# machine accepts at once; a dead one refuses at once.
RECORDED_CLUSTER_PROBE_S = 2.0

# Ray 2.60 logs this from ray.init() whenever RAY_AUTH_MODE is unset and it starts a local
# cluster (or joins the recorded one with a token at hand): it reports Ray's default, which
# README documents, and its only advice is to turn authentication off.
AUTH_DEFAULT_NOTICE = "Token authentication is enabled for this Ray cluster"
AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"

# Ray core logs this (at ERROR, once per process) when a driver creates an actor that may
# restart and whose constructor takes an argument from the object store (ray-project/ray#53727).
# Every Ray Data actor pool does: Ray Data passes each pool actor its DataContext and its
# MapTransformer as object refs (actor_pool_map_operator._start_actor; ray-project/ray#57733),
# whatever the user's class takes, and restarts its actors by default (max_restarts=-1), which
# our fault tolerance relies on (tests/test_actor_faults.py). The operator holds both refs for
# the job's life, so they cannot go out of scope while an actor may restart.
ACTOR_ARGUMENT_WARNING = re.compile(r"has constructor arguments in the object store and max_restarts > 0")
UNPLACEABLE_RESOURCE = "tis_ray_no_node_has_this"


def connect(address: str | None = None, verbose: bool = False) -> None:
    """Join the Ray cluster at `address` (or ``RAY_ADDRESS``); else the local cluster a
    ``ray start`` recorded on this machine, if it answers; else start a local Ray.

    `verbose` lets all of Ray's own lines through; without it, the ones a user cannot act on
    are kept back (see the module's notes).
    """
    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = _local_address()
    with _log_records_dropped(AUTH_SETUP_LOGGER, AUTH_DEFAULT_NOTICE, active=not verbose):
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)
    if not verbose:
        _absorb_actor_argument_warning()


def show_progress(enabled: bool) -> None:
    """Ray Data's progress bars on, or off with its per-operator log lines quietened."""
    DataContext.get_current().enable_progress_bars = enabled
    logging.getLogger("ray.data").setLevel(logging.INFO if enabled else logging.WARNING)
    # Without bars Ray Data warns how to turn them on in code; the CLI's `--verbose` is how, and
    # the job's own progress line (`progress`) stands in for them.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO if enabled else logging.ERROR)
    # Ray Data logs the whole stack of any error that stops a job, then raises it: the error itself
    # still reaches the caller (a user error as one line through the CLI, see `errors.user_error_in`;
    # anything else with its traceback), so the logged copy is only noise for a scorer that could
    # not start, and its advice to report a Ray bug is wrong there.
    logging.getLogger("ray.data.exceptions").setLevel(logging.ERROR if enabled else logging.CRITICAL)


def _local_address() -> str | None:
    """What a bare ``ray.init()`` is given: None, to join the local cluster ``ray start``
    recorded or to start one where none is recorded; "local" when the recorded one is gone.

    Ray 2.60 keeps the GCS address of the last ``ray start --head`` in
    ``<$RAY_TMPDIR, else $TMPDIR, else /tmp>/ray/ray_current_cluster`` until ``ray stop``, and
    a bare ``ray.init()`` joins that address (``services.get_ray_address_from_environment``),
    retrying for minutes when the cluster was killed or crashed. No address was asked for, so
    a local Ray is what the user gets either way: say why in one line and start a fresh one.
    """
    from ray._common.utils import get_ray_address_file
    from ray._private.utils import read_ray_address

    recorded = read_ray_address()
    if recorded is None or _answers(recorded):
        return None
    logger.warning("the local Ray cluster recorded in %s (%s) does not answer; starting a new local Ray "
                   "(`ray stop`, or deleting that file, forgets it)", get_ray_address_file(None), recorded)
    return "local"


def _answers(address: str) -> bool:
    """Whether something accepts connections at `address` (host:port), Ray's GCS port."""
    from ray._common.network_utils import parse_address

    parsed = parse_address(address)
    if parsed is None:
        return True  # not ours to judge: Ray reports an address it cannot read
    host, port = parsed
    try:
        with socket.create_connection((host, int(port)), timeout=RECORDED_CLUSTER_PROBE_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _log_records_dropped(logger_name: str, message_start: str, active: bool) -> Iterator[None]:
    """The records of `logger_name` whose message starts with `message_start` are dropped, while active."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(message_start)

    target = logging.getLogger(logger_name)
    if active:
        target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


def _absorb_actor_argument_warning() -> None:
    """Trip Ray core's once-per-process `ACTOR_ARGUMENT_WARNING` here, with this process's
    stderr captured, so that Ray Data's pool actors do not print it; every other line written
    meanwhile is written back.

    The line comes from the C++ core worker, which writes every ERROR to the process's stderr
    (fd 2) whatever Python's logging says; only RAY_BACKEND_LOG_LEVEL=fatal would stop it, and
    that, inherited by every process of a local Ray, would also empty their log files. Ray
    logs it once per process (RAY_LOG_ONCE_PER_PROCESS in CoreWorker::CreateActor), while
    creating the actor, so one restartable actor with an object-store argument, never placed
    and killed at once, uses it up.
    """

    class ArgumentProbe:
        def __init__(self, _argument):
            pass

    # A resource no node has keeps it from being placed: killing an actor that is being placed
    # makes the GCS log "Failed to kill actor NIL_ID" instead, which reaches the console too.
    probe_class = ray.remote(num_cpus=0, resources={UNPLACEABLE_RESOURCE: 1}, max_restarts=1)(ArgumentProbe)
    argument = ray.put(None)
    with _stderr_captured() as captured:
        probe = probe_class.remote(argument)
    ray.kill(probe)  # type: ignore[arg-type]  # ray's stubs type .remote() as the class or a handle
    others = [line for line in captured if not ACTOR_ARGUMENT_WARNING.search(line.decode(errors="replace"))]
    if others:
        os.write(2, b"".join(others))


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[bytes]]:
    """What is written to this process's fd 2 inside the block, as lines (filled in at its end)."""
    lines: list[bytes] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.readlines())
