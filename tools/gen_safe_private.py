"""Generate ``profiles/safe-private-2024b.json`` (PS3.15 Table E.3.10-1) from the standard.

Never edit the JSON by hand: change this script (or its input) and re-run it::

    python tools/gen_safe_private.py            # write profiles/safe-private-2024b.json
    python tools/gen_safe_private.py --check    # exit 1 if the committed file differs

Input
-----
``tools/data/ps3.15-2024b-table-E.3.10-1.xml.gz``: the ``<table xml:id="table_E.3.10-1">``
element of the PS3.15 2024b DocBook source (``part15.xml``), verbatim, gzipped. Taken from
the mirror ``aglv/dicom-spec`` (``source/docbook/part15/part15.xml``, commit
``d0fc1e7d5fe6ea9f09cf0bfb096cd6d3cab1cc20``, subtitle "DICOM PS3.15 2024b - Security and
System Management Profiles"); NEMA publishes the same file at
https://dicom.nema.org/medical/dicom/2024b/source/docbook/part15/part15.xml. ``--docbook``
reads the table from a whole ``part15.xml`` instead (to move to a later edition, or to check
this fragment against NEMA's own file).

Output
------
Every row, in the table's order: ``tag`` ``(gggg,xxEE)`` (hex in upper case; the DocBook
mixes cases), ``creator`` (exact: case and spaces matter), ``vr`` and ``vm`` as the table
gives them. ``tools/gen_profiles.py`` turns the rows into the Retain Safe Private layer.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDITION = "2024b"
FRAGMENT = ROOT / "tools" / "data" / f"ps3.15-{EDITION}-table-E.3.10-1.xml.gz"
OUTPUT = ROOT / "profiles" / f"safe-private-{EDITION}.json"
SOURCE = (
    "aglv/dicom-spec, source/docbook/part15/part15.xml, commit "
    "d0fc1e7d5fe6ea9f09cf0bfb096cd6d3cab1cc20 (a mirror of NEMA's DocBook; its subtitle reads "
    "'DICOM PS3.15 2024b - Security and System Management Profiles')"
)
HEADER = ["Data Element", "Private Creator", "VR", "VM", "Meaning"]
_DOCBOOK = "http://docbook.org/ns/docbook"
_D = "{" + _DOCBOOK + "}"
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")


def table_fragment(docbook: str) -> str:
    """The ``<table xml:id="table_E.3.10-1">`` element of a PS3.15 DocBook text."""
    at = docbook.find('xml:id="table_E.3.10-1"')
    start = docbook.rfind("<table ", 0, at)
    end = docbook.find("</table>", at)
    if at < 0 or start < 0 or end < 0:
        raise SystemExit("no <table xml:id=\"table_E.3.10-1\"> in the DocBook text")
    return docbook[start : end + len("</table>")]


def _text(cell: ET.Element) -> str:
    return " ".join("".join(cell.itertext()).split())


def parse_rows(fragment: str) -> list[dict[str, str]]:
    """The rows of Table E.3.10-1, checked for shape (five cells, a private tag, no duplicate)."""
    if "xmlns=" not in fragment.split(">", 1)[0]:  # the fragment inherits the default namespace
        fragment = fragment.replace("<table ", f'<table xmlns="{_DOCBOOK}" ', 1)
    table = ET.fromstring(fragment)
    header = [_text(th) for th in table.iter(_D + "th")]
    if header != HEADER:
        raise SystemExit(f"unexpected header {header}, expected {HEADER}")
    body = table.find(_D + "tbody")
    if body is None:
        raise SystemExit("the table has no <tbody>")
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for n, tr in enumerate(body.findall(_D + "tr"), 1):
        cells = [_text(td) for td in tr.findall(_D + "td")]
        if len(cells) != len(HEADER):
            raise SystemExit(f"row {n}: {len(cells)} cells, expected {len(HEADER)}")
        match = _TAG.fullmatch(cells[0])
        if match is None or int(match.group(1), 16) % 2 == 0:
            raise SystemExit(f"row {n}: {cells[0]!r} is not a private element (gggg,xxee)")
        tag = f"({match.group(1).upper()},xx{match.group(2).upper()})"
        if not cells[1]:
            raise SystemExit(f"row {n}: no private creator")
        if (tag, cells[1]) in seen:
            raise SystemExit(f"row {n}: {tag} {cells[1]!r} is listed twice")
        seen.add((tag, cells[1]))
        rows.append({"tag": tag, "creator": cells[1], "vr": cells[2], "vm": cells[3]})
    return rows


def document(rows: list[dict[str, str]]) -> dict[str, object]:
    """The JSON document: rows plus where they come from."""
    return {
        "title": "DICOM PS3.15 Table E.3.10-1 Safe Private Attributes",
        "edition": EDITION,
        "verified_against_edition": True,
        "verified_against": f"PS3.15 {EDITION} DocBook ({SOURCE})",
        "generated_by": "tools/gen_safe_private.py from tools/data/" + FRAGMENT.name,
        "provenance": (
            f"Every row of PS3.15 {EDITION} Table E.3.10-1 (section E.3.10, Note 1), in the "
            "table's order, parsed from the table's DocBook element: private element (group, "
            "element byte; xx = the creator's block; hex in upper case), private creator "
            "(exact string), VR and VM as the table gives them (an empty VR is empty in the "
            "table too; the Meaning column is not copied). The table attaches no condition "
            "to any row; its Note 2 advises that bulk OB data is particularly unsafe. How the "
            "lake applies each row (by VR) is tools/gen_profiles.py's and docs/deid.md's."
        ),
        "rows": rows,
    }


def render(rows: list[dict[str, str]]) -> str:
    """The JSON text: one row per line, so a new edition's diff reads row by row."""
    head = json.dumps({k: v for k, v in document(rows).items() if k != "rows"}, indent=1,
                      ensure_ascii=False)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    return head[:-2] + ',\n "rows": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docbook", type=Path, help="a whole part15.xml to read the table from")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    if args.docbook is not None:
        fragment = table_fragment(args.docbook.read_text(encoding="utf-8"))
    else:
        fragment = gzip.decompress(FRAGMENT.read_bytes()).decode("utf-8")
    text = render(parse_rows(fragment))
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run tools/gen_safe_private.py")
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is current")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(json.loads(text)['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
