"""Mutation testing of the SSRF guard and the URL classification runs with the suite, so
that it cannot rot: every mutant mutmut makes of `tis_ray/netguard.py` and
`tis_ray/sources.py` is killed by the unit tests, or is one of the survivors judged
harmless, with the reason, in scripts/mutation-accepted.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.heavy
@pytest.mark.parametrize(("module", "least_mutants"), [("netguard", 300), ("sources", 150)])
def test_every_mutant_of_the_address_and_url_checks_is_killed_or_explained(module, least_mutants):
    done = subprocess.run(["bash", str(REPO / "scripts" / "mutation.sh"), module], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, "ZERO_SURVIVORS": module},
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    summary = re.search(rf"^{module} total=(\d+) killed=(\d+) survived=(\d+)", done.stdout, re.M)
    assert summary, done.stdout[-3000:]
    total, killed, survived = map(int, summary.groups())
    assert total > least_mutants  # the module was mutated, not skipped
    assert survived == done.stdout.count("survived (accepted")
    assert "NOT EXPLAINED" not in done.stdout
