"""README.md says what the code does: its flags, error kinds and quoted defaults are checked
against the code itself (the parser, `errors`, the settings), not retyped here."""

from __future__ import annotations

import argparse
import re

import pytest
from conftest import REPO

from tis_ray import errors
from tis_ray.cli import build_parser
from tis_ray.config import (
    SERVE_BATCH_WAIT_MS,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_PIXELS,
    FetchConfig,
)
from tis_ray.http_api import MAX_CAPTION_CHARS
from tis_ray.serve import ServiceLimits

README = (REPO / "README.md").read_text()

# Flags the README shows for other tools' commands (pip, ray, kubectl, make_test_model.py).
OTHER_TOOLS_FLAGS = {"--arch", "--follow", "--generate", "--index-url", "--no-deps", "--no-wait",
                     "--runtime-env-json", "--suite", "--working-dir"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def _options(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Each option's spellings (``["-o", "--output"]``), --help left out."""
    return [action.option_strings for action in parser._actions
            if action.option_strings and "--help" not in action.option_strings]


def _in_readme(spelling: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", README) is not None


def test_every_command_line_flag_is_documented_and_every_documented_flag_exists():
    ours = {name: _options(sub) for name, sub in _subcommands(build_parser()).items()}
    undocumented = {f"{name} {spellings[-1]}" for name, options in ours.items() for spellings in options
                    if not any(_in_readme(s) for s in spellings)}
    assert not undocumented, f"flags missing from README.md: {sorted(undocumented)}"
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", README))
    known = {s for options in ours.values() for spellings in options for s in spellings} | OTHER_TOOLS_FLAGS
    known.add("--version")
    assert not documented - known, f"README.md names flags that no command has: {sorted(documented - known)}"


def _default(command: str, flag: str):
    (action,) = [a for a in _subcommands(build_parser())[command]._actions if flag in a.option_strings]
    return action.default


def _documented_error_kinds() -> set[str]:
    table = README.split("Error kinds:", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([a-z_<>]+)` \|", table, flags=re.MULTILINE))


def test_the_error_kind_table_is_the_codes_list():
    in_code = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)}
    assert _documented_error_kinds() == in_code | {"http_<status>"}


@pytest.mark.parametrize("phrase", [
    f"at most {FetchConfig.per_host_limit} requests at a\ntime go to one host",
    f"`Retry-After` (capped at {FetchConfig.retry_after_cap_s:g} s)",
    f"more than {FetchConfig.max_redirects} redirects",
    f"more than {FetchConfig.max_bytes // 2**20} MiB ({FetchConfig.max_bytes:,} bytes;",
    f"Pillow's safety limit ({FetchConfig.max_pixels / 1e6:.1f} million)",
    f"more than {ServiceLimits.max_pairs} pairs",
    f"a caption over\n{MAX_CAPTION_CHARS:,} characters",
    f"body over {ServiceLimits.max_body_bytes // 2**20} MiB (413)",
    f"`--max-pixels` (default {SERVE_MAX_PIXELS:,})",
    f"`--max-batch-size` (default {SERVE_MAX_BATCH_SIZE})",
    f"`--batch-wait-ms` (default {SERVE_BATCH_WAIT_MS:g})",
    f"every `--checkpoint-every` seconds,\ndefault {_default('score', '--checkpoint-every'):g}",
])
def test_defaults_quoted_in_the_readme_are_the_codes(phrase):
    flat = " ".join(README.split())
    assert " ".join(phrase.split()) in flat, phrase


def test_the_benchmark_figures_are_rendered_from_the_recorded_run(tmp_path):
    """docs/benchmarks.md's generated section is exactly what scripts/bench.py renders from
    docs/benchmarks.json: no figure there was typed by hand (hand-written notes elsewhere in the
    file mark their one-off probes as such)."""
    import json
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from benchkit import report

    committed = (REPO / "docs" / "benchmarks.md").read_text()
    headings = {"main": report.HEADING, **report.SUITE_HEADINGS}

    def section(text: str, heading: str) -> str:
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + 1)
        return text[start:end if end >= 0 else len(text)].rstrip("\n")

    checked = []
    for suite, heading in headings.items():
        recorded = REPO / "docs" / report.json_name(suite)
        if not recorded.exists():  # a suite not run yet has no section either
            assert heading not in committed, f"{heading} has no {recorded.name} to render it from"
            continue
        rendered_doc = tmp_path / "benchmarks.md"
        rendered_doc.write_text(committed)
        report.write(json.loads(recorded.read_text()), rendered_doc, tmp_path / "images")  # plots beside it
        assert section(committed, heading) == section(rendered_doc.read_text(), heading), suite
        checked.append(suite)
    assert "main" in checked
