"""Steward tools: ``lake profiles list|show|diff`` and ``lake deid FILE`` (a local dry run).

Wired by ``pipelines/cli.py``::

    app.add_typer(profiles_app, name="profiles")
    app.command("deid")(deid_command)
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lake._errors import InputRefusedError, LakeError
from lake.vault import Secret
from pipelines._common import out, reported

if TYPE_CHECKING:  # pydicom and the engine wait for the command (issue 14.1)
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from rich.table import Table

    from lake.deid import DeidResult, Profile

__all__ = ["deid_command", "profiles_app"]

profiles_app = typer.Typer(
    rich_markup_mode=None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    help="De-identification profiles: list them, show every attribute's action, compare two.",
    no_args_is_help=True,
)

_MASK = "•••"


@profiles_app.command("list")
def list_command() -> None:
    """List the built-in profiles with their version, options and digest."""
    from rich.table import Table

    from lake.deid import list_profiles, load_profile

    with reported():
        table = Table("name", "version", "options", "sha256", "description")
        for name in list_profiles():
            p = load_profile(name)
            options = ", ".join(o.value for o in p.options) or "-"
            table.add_row(p.name, p.version, options, p.sha256[:12], p.description)
        out.print(table)


def _header(p: Profile) -> str:
    """The profile's header line, as markup: its name bold, every value escaped."""
    from rich.markup import escape

    low, high = p.date_shift
    options = ", ".join(o.value for o in p.options) or "none"
    return "[bold]" + escape(p.name) + "[/]" + escape(
        f" {p.version}  (PS3.15 {p.edition}, sha256 {p.sha256[:16]})\n"
        f"options: {options}\n"
        f"date shift (retain-modified-dates): {low}..{high} days into the past, "
        "keyed per patient"
    )


@profiles_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="A built-in profile or a .toml/.dicom path.")],
    grep: Annotated[
        str | None,
        typer.Option(help="Only rows whose field, name or action contains this text."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rules as JSON instead of a table.")
    ] = False,
) -> None:
    """Show every attribute and its action, from the compiled plan."""
    from rich.table import Table

    from lake.deid import Deidentifier, load_profile

    with reported():
        p = load_profile(name)
        rows = p.describe()
        if grep:
            needle = grep.lower()
            rows = [r for r in rows if any(needle in v.lower() for v in r.values())]
        if as_json:
            typer.echo(json.dumps({"name": p.name, "version": p.version, "sha256": p.sha256,
                                   "options": [o.value for o in p.options], "rules": rows},
                                  indent=1))
            return
        out.print(_header(p), highlight=False, markup=True)
        table = Table("field", "attribute", "action", "effect", "layer")
        for r in rows:
            table.add_row(r["field"], r["name"], r["action"], r["effect"], r["layer"])
        out.print(table)
        plan = Deidentifier(p, Secret(bytes(32))).plan
        if plan.filters:
            filters = Table("pixel filter", "list", "regions")
            for rule in plan.filters:
                filters.add_row(rule.label, rule.group, str(len(rule.coordinates)))
            out.print(filters)
        out.print(f"{len(rows)} rules", highlight=False)


@profiles_app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="First profile (name or path).")],
    b: Annotated[str, typer.Argument(help="Second profile (name or path).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the differing rules as JSON instead of a table.")
    ] = False,
) -> None:
    """Show the attributes whose action differs between two profiles."""
    from rich.table import Table

    from lake.deid import load_profile

    with reported():
        pa, pb = load_profile(a), load_profile(b)
        rows_a = {r["field"]: r for r in pa.describe()}
        rows_b = {r["field"]: r for r in pb.describe()}
        if as_json:
            differ = [
                {"field": key, "name": (rows_a.get(key) or rows_b[key])["name"],
                 "a": _rule(rows_a.get(key)), "b": _rule(rows_b.get(key))}
                for key in sorted(set(rows_a) | set(rows_b))
                if _rule(rows_a.get(key)) != _rule(rows_b.get(key))
            ]
            typer.echo(json.dumps({"a": pa.name, "b": pb.name, "rules": differ}, indent=1))
            return
        out.print(f"{pa.name} {pa.version}  vs  {pb.name} {pb.version}", highlight=False)
        only_a = sorted({o.value for o in pa.options} - {o.value for o in pb.options})
        only_b = sorted({o.value for o in pb.options} - {o.value for o in pa.options})
        out.print(f"options only in {pa.name}: {', '.join(only_a) or '-'}; "
                  f"only in {pb.name}: {', '.join(only_b) or '-'}", highlight=False)
        table = Table("field", "attribute", pa.name, pb.name)
        changed = 0
        for key in sorted(set(rows_a) | set(rows_b)):
            ra, rb = rows_a.get(key), rows_b.get(key)
            left = f"{ra['action']} ({ra['effect']})" if ra else "-"
            right = f"{rb['action']} ({rb['effect']})" if rb else "-"
            if left != right:
                changed += 1
                table.add_row(key, (ra or rb or {}).get("name", ""), left, right)
        out.print(table)
        out.print(f"{changed} attributes differ", highlight=False)


def _rule(row: dict[str, str] | None) -> dict[str, str] | None:
    """The action and effect of one ``describe()`` row (None: the profile has no such rule)."""
    return None if row is None else {"action": row["action"], "effect": row["effect"]}


def _value(elem: DataElement | None, show: bool) -> str:
    if elem is None:
        return "(absent)"
    if elem.VR == "SQ":
        return f"{len(elem.value)} item(s)"
    if elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
        length = len(elem.value) if elem.value is not None else 0
        return f"{length} bytes"
    if elem.is_empty:
        return "(empty)"
    if not show:
        return _MASK
    text = str(elem.value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pairs(before: Dataset, after: Dataset, depth: str) -> Iterator[tuple[str, Any, Any]]:
    tags = sorted(set(before.keys()) | set(after.keys()))
    for tag in tags:
        b = before.get(tag)
        a = after.get(tag)
        yield depth, b, a
        if b is not None and a is not None and b.VR == "SQ" and a.VR == "SQ":
            for i, (ib, ia) in enumerate(zip(b.value, a.value, strict=False)):
                yield from _pairs(ib, ia, f"{depth}{tag.group:04X},{tag.element:04X}[{i}] ")


def _outcome(b: DataElement | None, a: DataElement | None) -> str:
    if b is None:
        return "added"
    if a is None:
        return "removed (X)"
    if b.VR != "SQ" and a.is_empty and not b.is_empty:
        return "emptied (Z)"
    if b.VR == "SQ":
        return "items de-identified" if len(a.value) else "emptied (Z)"
    return "kept" if b.value == a.value else "replaced"


def deid_command(
    file: Annotated[Path, typer.Argument(help="A DICOM file; it is read, never written.")],
    profile: Annotated[
        str, typer.Option(help="A built-in profile or a .toml/.dicom path.")
    ] = "basic",
    show_values: Annotated[
        bool,
        typer.Option(
            "--show-values",
            help="Reveal values (originals included) on this terminal. Masked by default.",
        ),
    ] = False,
) -> None:
    """Dry run: de-identify one file locally and show every element before and after.

    Nothing is stored. An ephemeral random secret is used, so UIDs, pseudonyms and date
    shifts differ from those of any lake. A file that ingest would quarantine gets a one-line
    error saying why (exit 1); the file's path is never printed.
    """
    from lake._capture import capture
    from lake.deid import load_profile
    from lake.ingest import read_instance

    with reported(), capture():  # parser warnings quote values: never on the terminal
        p = load_profile(profile)
        original = read_instance(_read(file))
        result, table = _dry_run(original, p, show_values)
    out.print(f"dry run of {p.name} {p.version}: nothing is stored; an ephemeral random secret "
              "is used (UIDs, pseudonyms and date shifts differ from any lake's)",
              highlight=False)
    out.print(table)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.actions.items()))
    out.print(f"actions: {counts}; pixels cleaned: {'yes' if result.pixels_cleaned else 'no'}"
              + (f" ({', '.join(result.pixel_rules)})" if result.pixel_rules else ""),
              highlight=False)


def _read(file: Path) -> bytes:
    """The file's bytes, within ingest's default bounds (no FIFO waited for, no device read)."""
    from lake.ingest import NotRegularFileError, ReadLimits, read_file

    try:
        return read_file(str(file), ReadLimits().max_file_bytes)
    except NotRegularFileError:
        raise InputRefusedError(
            "not_regular", "the file is not a regular file (a FIFO, device or socket)"
        ) from None
    except OSError as exc:
        raise InputRefusedError(
            "unreadable", f"the file cannot be read ({type(exc).__name__})"
        ) from None


def _dry_run(original: Dataset, p: Profile, show_values: bool) -> tuple[DeidResult, Table]:
    """De-identify a copy of ``original`` and tabulate both (raises LakeError on any failure)."""
    from lake.deid import Deidentifier

    engine = Deidentifier(p, Secret(secrets.token_bytes(32)))
    try:
        result_ds = copy.deepcopy(original)
        result = engine.apply(result_ds)
        return result, _table(original, result_ds, show_values)
    except LakeError:  # the profile refuses it (burned-in text...): its own message
        raise
    except RecursionError:
        raise InputRefusedError(
            "too_deep", "sequences are nested too deeply to de-identify"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure on a damaged file: ingest quarantines it
        raise InputRefusedError(
            "processing_error",
            f"the file cannot be de-identified ({type(exc).__name__}); ingest would quarantine it",
        ) from None


def _table(original: Dataset, result_ds: Dataset, show_values: bool) -> Table:
    from rich.table import Table

    table = Table("element", "VR", "before", "after", "outcome")
    for depth, b, a in _pairs(original, result_ds, ""):
        ref = b if b is not None else a
        name = f"{depth}({ref.tag.group:04X},{ref.tag.element:04X}) {ref.keyword or ''}"
        table.add_row(name, ref.VR, _value(b, show_values), _value(a, show_values),
                      _outcome(b, a))
    meta_b = getattr(original, "file_meta", None)
    meta_a = getattr(result_ds, "file_meta", None)
    if meta_b is not None and meta_a is not None:
        for _depth, b, a in _pairs(meta_b, meta_a, "meta "):
            ref = b if b is not None else a
            table.add_row(f"meta ({ref.tag.group:04X},{ref.tag.element:04X}) {ref.keyword}",
                          ref.VR, _value(b, show_values), _value(a, show_values),
                          _outcome(b, a))
    return table
