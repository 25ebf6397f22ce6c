"""Figures the reliability tests measured, kept for docs/reliability.md.

When ``TIS_FIGURES_DIR`` is set, each test writes its figures there as
``<name>.json``; ``scripts/render_reliability.py`` renders the docs' tables from
them. Without it nothing is written (a normal test run leaves the tree clean).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def record_figures(name: str, figures: dict) -> None:
    folder = os.environ.get("TIS_FIGURES_DIR")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.system()} {platform.release()})"
    data = {**figures, "machine": machine,
            "date": datetime.datetime.now(datetime.UTC).date().isoformat()}
    (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
