"""Mutation testing of the SSRF guard runs with the suite, so that it cannot rot: every
mutant mutmut makes of `tis_ray/netguard.py` is killed by the unit tests, or is one of
the survivors judged harmless, with the reason, in scripts/mutation-accepted.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.heavy
def test_every_mutant_of_the_ssrf_guard_is_killed_or_explained():
    done = subprocess.run(["bash", str(REPO / "scripts" / "mutation.sh"), "netguard"], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    summary = re.search(r"^netguard total=(\d+) killed=(\d+) survived=(\d+)", done.stdout, re.M)
    assert summary, done.stdout[-3000:]
    total, killed, survived = map(int, summary.groups())
    assert total > 300  # the module was mutated, not skipped
    assert survived == done.stdout.count("survived (accepted")
    assert "NOT EXPLAINED" not in done.stdout
