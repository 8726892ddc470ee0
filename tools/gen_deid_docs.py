"""Write the generated part of ``docs/deid.md``: every attribute and its action per profile.

    python tools/gen_deid_docs.py           # rewrite the section between the markers
    python tools/gen_deid_docs.py --check   # exit 1 if docs/deid.md is stale

The table comes from the compiled plans (``Profile.describe()``), so it says what the engine
does, not what someone remembered it does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deid.md"
BEGIN = "<!-- BEGIN GENERATED: tools/gen_deid_docs.py -->"
END = "<!-- END GENERATED -->"


def table() -> str:
    """The markdown table of every rule of the built-in profiles."""
    sys.path.insert(0, str(ROOT))
    from lake.deid import list_profiles, load_profile

    names = list_profiles()
    rows: dict[str, dict[str, str]] = {}
    titles: dict[str, str] = {}
    for name in names:
        for row in load_profile(name).describe():
            rows.setdefault(row["field"], {})[name] = f"{row['action']}: {row['effect']}"
            titles[row["field"]] = row["name"]
    lines = [
        "| field | attribute | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for field in rows:
        cells = [rows[field].get(n, "") for n in names]
        name = titles[field].replace("|", "/")
        lines.append(f"| `{field}` | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with the generated section replaced."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n\n" + table() + "\n\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the doc is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC.relative_to(ROOT)} is stale: run tools/gen_deid_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
