"""Optional integrations (Airflow, Spark) and the one-line error when their extra is missing.

The core never imports them: a plain `pip install tis-ray` stays free of Airflow and
PySpark, and a user who imports an integration without its extra is told what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An integration was imported without the packages its extra installs."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """`module` imported, or `MissingExtraError` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{what} needs {module}, from the {extra!r} extra: pip install 'tis-ray[{extra}]'") from None
