"""Each integration imported without its extra: one line naming the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("module", "blocked", "needed", "extra"), [
    ("tis_ray.spark", "pyspark", "pyspark", "spark"),
    ("tis_ray.airflow", "airflow", "airflow.sdk", "airflow"),
])
def test_an_integration_without_its_extra_says_which_extra_to_install(module, blocked, needed, extra):
    # A `None` in sys.modules makes Python refuse the import, as if the package were not installed.
    probe = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"tis_ray.extras.MissingExtraError: {module} needs {needed}, from the {extra!r} extra: "
                    f"pip install 'tis-ray[{extra}]'"), done.stderr
