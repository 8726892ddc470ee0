"""Golden sha256s of what ingest makes of a fixed corpus under every built-in profile.

    python tools/deid_golden.py           # compare with tests/data/deid_golden.json (exit 1)
    python tools/deid_golden.py --write   # rewrite tests/data/deid_golden.json

``tests/test_deid_golden.py`` runs the comparison in the suite. It guards the promise that an
optimisation of the de-identification engine (``lake/deid``) or of ingest's encoders
(``lake/ingest``) changes nothing but speed: every output is compared with the bytes the lake
made when the goldens were written, not only with another path of today's code.

Corpus (inputs, each recorded with its own sha256 so that a changed input is told apart from
a changed output):

- ``planted``: the planted-identifier corpus of ``tests/deid_corpus.py`` (3 patients: CT
  series with privates, overlays, curves and deep sequences; Basic Text SR; Encapsulated PDF;
  ultrasound with burned-in text; MR with identities in its descriptions).
- ``pydicom``: every ``*.dcm`` that pydicom ships in ``pydicom/data/test_files``.
- ``deid-data``: every ``*.dcm`` of the ``deid-data`` package (skipped when not installed).
- ``shared``: real vendor MR of ``../shared/data`` (``dcm_qa``, ``vendors``; skipped when
  absent): the small 12-bit, enhanced and transfer-syntax folders whole, of the others the
  files whose path hashes into one sixteenth.

Each file goes through ``lake.ingest``'s ``process_bytes`` (parse, checks, documents,
``Deidentifier.apply``, Part-10 and DICOM JSON encoders, catalog row) with a fixed secret, so
UIDs, pseudonyms and date shifts are the same on every machine. Per output the goldens hold
the sha256 of the Part-10 header bytes the lake stores, the sha256 of the catalog row
(every column; ``header_json`` and the pixel blob's hash included) and the action counts; a
refused file holds its quarantine reason.

When ``--write`` is legitimate: only for an *intended* change of output, stated with its
reason in the commit that carries the new goldens - a profile rule changed, the engine
deliberately does something else, the lake's version (it is in ImplementationVersionName)
or a dependency that writes bytes (pydicom, pikepdf) changed and the new bytes were checked.
Also when the corpus grows (a new built-in profile, new input files): then no existing line
of the JSON may change, which its diff shows. Never to make a speed-up pass: a speed-up
changes no byte. The row holds the profile's sha256, so any edit of a profile's files (a
comment too) changes every row of that profile and of the profiles extending it. The goldens
record the library versions they were written with; a difference is reported with them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "deid_golden.json"
REFUSED = "refused"
SECRET = b"deid-golden-secret-0123456789abc"
"""The fixed 32-byte lake secret of the goldens (UID, patient-id and date-shift keys)."""
PATIENTS = 3
GROUPS = ("planted", "pydicom", "deid-data", "shared")
_WHOLE = ("vendors/dcm_qa_12bit/", "vendors/dcm_qa_enh/", "vendors/dcm_qa_ts/")
"""Shared vendor folders taken whole (few files: 12-bit, enhanced multi-frame, transfer
syntaxes); of the others, the files whose path hashes into one sixteenth."""
_VERSIONS = ("pydicom", "pikepdf", "numpy", "deid", "imaging-lake")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus(folder: Path) -> dict[str, dict[str, Path]]:
    """The input files by group and name (a POSIX path relative to the group's root).

    The planted corpus is written under ``folder``; a group whose data is not installed is
    missing from the result. Names are sorted, whatever order the file system lists them in.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from pydicom.data import get_testdata_file

    from tests.deid_corpus import write_corpus

    planted = folder / "planted"
    write_corpus(planted, PATIENTS)
    roots = {"planted": planted}
    ct_small = get_testdata_file("CT_small.dcm")  # shipped in pydicom's package, no download
    if ct_small is not None:
        roots["pydicom"] = Path(ct_small).parent
    try:
        import deid_data  # type: ignore[import-untyped]

        roots["deid-data"] = Path(deid_data.__file__).parent / "data"
    except ImportError:
        pass
    found: dict[str, dict[str, Path]] = {}
    for group, root in roots.items():
        files = {p.relative_to(root).as_posix(): p for p in root.rglob("*.dcm") if p.is_file()}
        if files:
            found[group] = dict(sorted(files.items()))
    shared = _shared_inputs(shared_data())
    if shared:
        found["shared"] = shared
    return found


def shared_data() -> Path:
    """``../shared/data`` from the project root, or ``LAKE_SHARED_DATA`` (as tests/conftest.py)."""
    return Path(os.environ.get("LAKE_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _shared_inputs(root: Path) -> dict[str, Path]:
    """The inputs (``In/`` folders) of the vendor data chosen by :data:`_WHOLE` and by hash.

    Chosen by a hash of the relative path, not by position in a listing, so a file added to
    the shared data changes nothing else in the selection.
    """
    folders = [root / "dcm_qa" / "In", *sorted(root.glob("vendors/*/In"))]
    chosen = {}
    for folder in folders:
        for path in folder.rglob("*"):
            name = path.relative_to(root).as_posix()
            if path.is_file() and (name.startswith(_WHOLE)
                                   or hashlib.sha256(name.encode()).digest()[0] < 16):
                chosen[name] = path
    return dict(sorted(chosen.items()))


def _canonical(value: object) -> object:
    if isinstance(value, bytes):
        return "sha256:" + _sha256(value)
    if isinstance(value, dt.date | dt.time):  # also pydicom's DA, DT and TM
        return value.isoformat()
    raise TypeError(f"a catalog column of type {type(value).__name__} has no canonical form")


def row_sha256(row: Mapping[str, Any]) -> str:
    """sha256 of a catalog row as canonical JSON (keys sorted, bytes by their sha256)."""
    text = json.dumps(row, sort_keys=True, separators=(",", ":"), default=_canonical)
    return _sha256(text.encode())


def outcomes(profile: str, files: Mapping[str, Path], lake: Path) -> dict[str, str]:
    """What ingest makes of each file under ``profile``, by name (see the module docstring).

    An output is ``"<sha256 of the Part-10 bytes> <sha256 of the row> <actions>"`` (actions
    as ``C11 D4 K9``), a refusal ``"refused <reason>"``. ``lake`` is a scratch folder that
    receives the pixel blobs and quarantined originals.
    """
    from lake.deid import Deidentifier, load_profile
    from lake.ingest._instance import Accepted, IngestContext, process_bytes
    from lake.ingest._quarantine import quarantine_key
    from lake.store import Location
    from lake.vault import Secret

    secret = Secret(SECRET)
    context = IngestContext(location=Location(str(lake.resolve())),
                            engine=Deidentifier(load_profile(profile), secret),
                            quarantine_key=quarantine_key(secret))
    found: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings about its malformed samples
        for name, path in files.items():
            outcome = process_bytes(path.read_bytes(), context)
            if isinstance(outcome, Accepted):
                actions = " ".join(f"{code}{n}" for code, n in sorted(outcome.actions.items()))
                found[name] = (f"{_sha256(outcome.row['header_dicom'])} "
                               f"{row_sha256(outcome.row)} {actions}")
            else:
                found[name] = f"{REFUSED} {outcome.record['reason']}"
    return found


def accepted(outcome: str) -> bool:
    """Whether an outcome of :func:`outputs` is a de-identified output (not a refusal)."""
    return not outcome.startswith(REFUSED)


def versions() -> dict[str, str]:
    """Python's and the byte-writing libraries' versions (recorded beside the goldens)."""
    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in _VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def profiles() -> list[str]:
    """The built-in profiles (``profiles/*.toml``)."""
    from lake.deid import list_profiles

    return list_profiles()


def compute(scratch: Path) -> dict[str, Any]:
    """The whole golden document: versions, input sha256s, outputs per profile and group."""
    files = corpus(scratch / "corpus")
    document: dict[str, Any] = {
        "about": "tools/deid_golden.py writes this file; read its docstring before --write",
        "versions": versions(),
        "inputs": {group: {name: _sha256(path.read_bytes()) for name, path in names.items()}
                   for group, names in files.items()},
        "outputs": {},
    }
    for profile in profiles():
        document["outputs"][profile] = {
            group: outcomes(profile, names, scratch / "lake" / profile)
            for group, names in files.items()
        }
    return document


def differences(expected: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
    """One line per name whose outcome differs (a name missing on either side included)."""
    lines = []
    for name in sorted(set(expected) | set(found)):
        want, got = expected.get(name), found.get(name)
        if want == got:
            continue
        if want is None or got is None:
            lines.append(f"{name}: {'not in the goldens' if want is None else 'not produced'}")
            continue
        if " " in want and accepted(want) and accepted(got):  # outputs, not input hashes
            labels = ("part10", "row", "actions")
            a, b = want.split(" ", 2), got.split(" ", 2)
            parts = [label for label, x, y in zip(labels, a, b, strict=False) if x != y]
            lines.append(f"{name}: {', '.join(parts)} differ\n  want {want}\n  got  {got}")
        else:
            lines.append(f"{name}: {want} != {got}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="rewrite the goldens (only for an intended change of output)")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as scratch:
        document = compute(Path(scratch))
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")  # a line a file
        counts = {p: sum(len(g) for g in groups.values())
                  for p, groups in document["outputs"].items()}
        print(f"wrote {GOLDEN.relative_to(ROOT)}: {counts}")
        return 0
    golden = json.loads(GOLDEN.read_text())
    lines = differences(golden["inputs"], document["inputs"])
    lines = [f"input {line}" for line in lines]
    for profile, groups in document["outputs"].items():
        for group, found in groups.items():
            expected = golden["outputs"].get(profile, {}).get(group, {})
            lines += [f"{profile} {group} {line}" for line in differences(expected, found)]
    if lines:
        print("\n".join(lines))
        print(f"goldens written with {golden['versions']}, here {document['versions']}")
        return 1
    print("no difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
