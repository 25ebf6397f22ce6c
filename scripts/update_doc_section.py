"""Put a generated markdown section into a document, replacing the section of the same heading.

    python scripts/update_doc_section.py docs/reliability.md /tmp/report/faults.md

The section file starts with its ``## Heading`` line; in the document that section
runs to the next ``## `` heading or the end. A section the document lacks is
appended, so sections written by different test suites live side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def replace_section(document: str, section: str) -> str:
    heading = section.splitlines()[0].rstrip()
    if not heading.startswith("## "):
        raise ValueError(f"the section must start with a '## ' heading, not {heading!r}")
    lines = document.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == heading]
    body = section.rstrip("\n").splitlines()
    if not starts:
        return "\n".join([*lines, "", *body]).lstrip("\n") + "\n"
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["", *lines[end:]] if end < len(lines) else []
    return "\n".join([*lines[:start], *body, *tail]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", type=Path)
    parser.add_argument("section", type=Path)
    args = parser.parse_args(argv)
    if not args.section.is_file():
        print(f"update_doc_section: no such file {args.section}", file=sys.stderr)
        return 2
    document = args.document.read_text() if args.document.exists() else ""
    args.document.write_text(replace_section(document, args.section.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
