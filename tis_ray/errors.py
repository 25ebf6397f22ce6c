"""Everything that can go wrong, in two families.

- A **row error** is data, not an exception that escapes: stages catch `RowError` and
  write ``"<kind>: <detail>"`` into the row's ``error`` column; the job goes on.
- A **user error** (`TisRayError` and its subclasses) stops the job or the request before
  any work is wasted on it: a bad input, output path, model or request. Its message is one
  line meant for the user; the CLI prints it and exits 2, the service answers 4xx.

Plain Python, no torch or Ray: `cli` imports this to catch them and stays fast to start.
"""

from __future__ import annotations

import re

# The documented error kinds. ``http_<status>`` is also produced for any HTTP
# status that is not a success (``http_404``, ``http_503``, ...).
INVALID_URL = "invalid_url"
UNSUPPORTED_SCHEME = "unsupported_scheme"
FILE_NOT_FOUND = "file_not_found"
STORAGE_ERROR = "storage_error"  # an object store refused or failed a read (access denied, network)
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
TOO_MANY_REDIRECTS = "too_many_redirects"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
DECOMPRESSION_BOMB = "decompression_bomb"
EMPTY_CAPTION = "empty_caption"
MISSING_IMAGE = "missing_image"
BLOCKED_ADDRESS = "blocked_address"
OPTED_OUT = "opted_out"  # the image's host said no AI use (X-Robots-Tag: noai, ...); see optout.py
BAD_SHARD = "bad_shard"  # a WebDataset shard cut short inside the sample, or not a tar file at all
INTERNAL_ERROR = "internal_error"  # a bug in tis-ray or a library; the row is kept and reported


def http_kind(status: int) -> str:
    return f"http_{status}"


# Kinds that may succeed if tried again later (``--retry-errors``): the server or the
# network was the problem, not the row. Every 5xx status counts, as does 429.
RETRYABLE_KINDS = frozenset({TIMEOUT, CONNECTION_ERROR, http_kind(429)})


def is_retryable(kind: str | None) -> bool:
    """Whether a row that failed with `kind` is worth fetching again."""
    if kind is None:
        return False
    return kind in RETRYABLE_KINDS or (kind.startswith("http_5") and len(kind) == 8 and kind[5:].isdigit())


class RowError(Exception):
    """A failure that belongs to one row; the job goes on."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    @classmethod
    def internal(cls, exc: Exception) -> RowError:
        """An unexpected exception, kept as one row's error so hostile input never costs the job."""
        return cls(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def error_kind(error: str | None) -> str | None:
    """The kind part of an ``error`` column value (``"http_404: Not Found"`` -> ``"http_404"``)."""
    if not error:
        return None
    return error.split(":", 1)[0]


class TisRayError(Exception):
    """Something the user can fix; the message (one line) says what and, where it can, how."""


class InputError(TisRayError):
    """The input as a whole, or an option about it, cannot be used."""


class OutputError(InputError):
    """The output path cannot be written (wrong type, missing folder, no permission).

    An `InputError` too: the path is something the user gave the job, and code written to
    catch `InputError` for it keeps working."""


class ModelLoadError(TisRayError):
    """The model asked for cannot be used (not found, not a supported family, unreachable hub)."""


class RequestRejected(TisRayError):
    """A whole service request refused with a 4xx; each ``detail`` item names a field (``loc``) and why."""

    def __init__(self, status: int, detail: list[dict]):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail

    @classmethod
    def at(cls, status: int, loc: list[str], msg: str, kind: str) -> RequestRejected:
        return cls(status, [{"loc": loc, "msg": msg, "type": kind}])


# A traceback's last line for one of the errors above: ``tis_ray.errors.ModelLoadError: <message>``.
_USER_ERROR_LINE = re.compile(r"^tis_ray\.errors\.(\w+): (.+)$", re.MULTILINE)


def user_error_in(text: str) -> TisRayError | None:
    """The user error a traceback's `text` ends in, rebuilt; None if it names none.

    Ray 2.60 tells the driver that an actor's constructor raised (a scorer that cannot use
    the GPU Ray gave it, a model it cannot load) with an `ActorDiedError` that keeps the
    actor's traceback as text only, not the exception: this is how the CLI can still say
    it in one line instead of two screens of Ray's traceback.
    """
    rebuilt = {error.__name__: error for error in (TisRayError, InputError, OutputError, ModelLoadError)}
    for name, message in reversed(_USER_ERROR_LINE.findall(text)):
        if name in rebuilt:
            return rebuilt[name](message)
    return None
