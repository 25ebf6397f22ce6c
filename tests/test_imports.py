"""The fetch actors' code must not import torch or transformers.

Every fetch actor is its own process; loading torch there costs about 1.5 s of CPU
and a few hundred MB per actor for nothing, since only the scorer runs the model.
"""

from __future__ import annotations

import subprocess
import sys


def test_fetch_stage_imports_no_model_libraries():
    probe = "import sys, tis_ray.fetch_stage; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
