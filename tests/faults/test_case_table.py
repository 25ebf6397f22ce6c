"""The case table itself: every expected kind is documented, and every case is told apart."""

from __future__ import annotations

import re

from conftest import REPO

from .cases import CASES, ROUTES


def test_every_expected_kind_is_in_the_readme_error_table():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_<>]+)` \|", readme, re.MULTILINE))
    assert {"timeout", "connection_error", "decode_error"} <= documented  # the pattern reads the table
    for kind in {c.expect for c in CASES if c.expect}:
        assert kind in documented or (re.fullmatch(r"http_\d{3}", kind) and "http_<status>" in documented), kind


def test_cases_have_distinct_names_and_routes():
    assert len({c.name for c in CASES}) == len(CASES)
    served = [c.route for c in CASES if c.behaviour is not None]
    assert len(set(served)) == len(served) and set(served) < set(ROUTES)


def test_every_valid_case_shows_a_picture_for_the_reference():
    assert all(c.asset is not None and c.asset.visible is not None for c in CASES if c.expect is None)
