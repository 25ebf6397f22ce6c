"""scripts/update_doc_section.py: a generated section replaces its namesake, the rest is kept."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "update_doc_section.py"
spec = importlib.util.spec_from_file_location("update_doc_section", SCRIPT)
update_doc_section = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_doc_section)
replace_section = update_doc_section.replace_section

DOC = "# Reliability\n\nIntro.\n\n## Fault cases\n\nold table\n\n## Actor faults\n\nkept\n"


def test_a_section_in_the_middle_is_replaced_and_the_others_kept():
    out = replace_section(DOC, "## Fault cases\n\nnew table\n")
    assert out == "# Reliability\n\nIntro.\n\n## Fault cases\n\nnew table\n\n## Actor faults\n\nkept\n"


def test_the_last_section_is_replaced_to_the_end():
    out = replace_section(DOC, "## Actor faults\n\nfresh\n")
    assert out.endswith("## Actor faults\n\nfresh\n") and "old table" in out and "kept" not in out


def test_a_missing_section_is_appended_and_replacing_again_is_stable():
    out = replace_section(DOC, "## Load\n\np99\n")
    assert out.endswith("kept\n\n## Load\n\np99\n")
    assert replace_section(out, "## Load\n\np99\n") == out


def test_a_section_without_a_heading_is_refused():
    with pytest.raises(ValueError, match="heading"):
        replace_section(DOC, "no heading\n")


def test_the_command_creates_the_document(tmp_path):
    section = tmp_path / "faults.md"
    section.write_text("## Fault cases\n\ntable\n")
    doc = tmp_path / "docs.md"
    result = subprocess.run([sys.executable, str(SCRIPT), str(doc), str(section)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert doc.read_text() == "## Fault cases\n\ntable\n"
    missing = subprocess.run([sys.executable, str(SCRIPT), str(doc), str(tmp_path / "nope.md")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
