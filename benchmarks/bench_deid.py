"""De-identification throughput against the floor and two other engines, in the same run.

    python benchmarks/bench_deid.py [--files 300]

On the same files (real CT and MR instances cloned with new UIDs, held in memory), one
process, one core. Two measures, in files per second with ratios:

1. end to end: read the bytes with pydicom, transform, write back to bytes (with pydicom for
   every method; for the lake also with its ingest encoder, which copies untouched elements);
2. transform only: the datasets are read beforehand; only the de-identification is timed.

Methods:

- floor: pydicom read + write, no change;
- lake basic / research / teaching: :class:`lake.deid.Deidentifier` (the complete basic
  profile, then two profiles with options);
- deid: ``deid.dicom.replace_identifiers`` with deid's default recipe;
- dicognito: ``dicognito.anonymizer.Anonymizer().anonymize``.

When ``../shared/data/dcm_qa`` is present, the floor and the lake profiles also run on its
real Siemens files (~580 KB, with reference sequences of dozens of items).

Goals (issue 3): lake basic >= 10x deid end to end (each method writing as it ships: the
lake with its ingest encoder, deid's datasets with pydicom) and on the de-identification
alone (transform only), and >= 0.5x the floor end to end whichever writes the lake's output
(its encoder or pydicom). The end-to-end ratio to deid with pydicom writing the lake's
output too is printed beside them.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._corpus import make_corpus

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))


def _pydicom_write(ds: object) -> None:
    ds.save_as(io.BytesIO(), enforce_file_format=False)  # type: ignore[attr-defined]


def _lake_write(ds: object) -> None:
    from lake.ingest._encode import encode_part10

    encode_part10(ds)  # type: ignore[arg-type]


def _rate(
    blobs: list[bytes],
    work: Callable[[object], None],
    repeat: int = 2,
    write: Callable[[object], None] = _pydicom_write,
) -> float:
    """Best files/s over ``repeat`` passes of read -> work -> write."""
    from pydicom import dcmread

    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for blob in blobs:
            ds = dcmread(io.BytesIO(blob))
            work(ds)
            write(ds)
        best = max(best, len(blobs) / (time.perf_counter() - start))
    return best


def _transform_rate(blobs: list[bytes], work: Callable[[object], None]) -> float:
    """files/s of ``work`` alone, on datasets read beforehand."""
    from pydicom import dcmread

    datasets = [dcmread(io.BytesIO(blob)) for blob in blobs]
    start = time.perf_counter()
    for ds in datasets:
        work(ds)
    return len(datasets) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="files in the corpus")
    parser.add_argument(
        "--deid-files",
        type=int,
        default=None,
        help="files given to deid (default: all; fewer is quicker, but the ratios then "
        "compare different files)",
    )
    args = parser.parse_args(argv)

    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers
    from deid.logger import bot
    from dicognito.anonymizer import Anonymizer

    from lake.deid import Deidentifier, load_profile
    from lake.vault import Secret

    paths = make_corpus(CACHE / f"deid-{args.files}", args.files)
    blobs = [p.read_bytes() for p in paths]
    secret = Secret(b"benchmark-secret-0123456789abcde")
    engines = {n: Deidentifier(load_profile(n), secret) for n in ("basic", "research", "teaching")}
    bot.level = -10  # deid logs every file at DEBUG
    recipe = DeidRecipe()  # deid's default recipe

    def deid_work(ds: object) -> None:
        replace_identifiers(dicom_files=[ds], deid=recipe, save=False, remove_private=True)

    def dicognito_work(ds: object) -> None:
        Anonymizer().anonymize(ds)  # type: ignore[arg-type]

    methods: dict[str, Callable[[object], None]] = {
        f"lake {n}": e.apply
        for n, e in engines.items()  # type: ignore[misc]
    }
    methods["deid"] = deid_work
    methods["dicognito"] = dicognito_work
    subset = {"deid": blobs[: args.deid_files]}  # all files unless asked: the same files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the other engines warn on these files; not ours
        floor = _rate(blobs, lambda ds: None)
        e2e = {k: _rate(subset.get(k, blobs), w, 2) for k, w in methods.items()}
        # What ingest really does: the lake writes with its own encoder (raw elements copied).
        e2e_lake = {
            k: _rate(blobs, w, 2, _lake_write) for k, w in methods.items() if k.startswith("lake ")
        }
        floor = max(floor, _rate(blobs, lambda ds: None))  # the best of before and after
        only = {k: _transform_rate(subset.get(k, blobs), w) for k, w in methods.items()}

    size = sum(map(len, blobs)) // len(blobs) // 1024
    print(
        f"{len(blobs)} files (CT/MR, ~{size} KB each; deid: {len(subset['deid'])}), "
        "one process, in memory; files/s (ratio to the floor)"
    )
    print(f"\n{'':24s} {'end to end':>22s} {'end to end':>22s} {'transform only':>15s}")
    print(f"{'':24s} {'(pydicom writes)':>22s} {'(lake encoder writes)':>22s}")
    print(f"{'floor (read + write)':24s} {floor:12.0f} (1.00x)")
    for label in methods:
        lake_w = (
            f"{e2e_lake[label]:12.0f} ({e2e_lake[label] / floor:4.2f}x)" if label in e2e_lake else ""
        )
        print(
            f"{label:24s} {e2e[label]:12.0f} ({e2e[label] / floor:4.2f}x)"
            f" {lake_w:>22s} {only[label]:15.0f}"
        )
    basic = "lake basic"
    vs_deid = only[basic] / only["deid"]
    vs_deid_e2e = e2e_lake[basic] / e2e["deid"]
    vs_floor = e2e_lake[basic] / floor
    print(f"\nlake basic vs deid, transform only:          {vs_deid:6.1f}x  (goal >= 10x)")
    print(
        f"lake basic vs deid, end to end:              {vs_deid_e2e:6.1f}x  (goal >= 10x; each "
        "written as it ships: lake by its ingest encoder, deid's datasets by pydicom)"
    )
    print(
        f"lake basic vs deid, end to end, both pydicom: {e2e[basic] / e2e['deid']:5.1f}x"
        "  (pydicom's writer bounds both)"
    )
    print(f"lake basic vs dicognito, transform only:     {only[basic] / only['dicognito']:6.1f}x")
    print(
        f"lake basic vs floor, end to end:             {vs_floor:6.2f}x  (goal >= 0.5x; "
        f"{e2e[basic] / floor:.2f}x written by pydicom)"
    )
    met = vs_deid >= 10 and vs_deid_e2e >= 10 and min(vs_floor, e2e[basic] / floor) >= 0.5
    print("goals met" if met else "GOALS MISSED")
    vendor = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcm_qa" / "In"
    if vendor.is_dir():
        files = [p for p in sorted(vendor.rglob("*")) if p.is_file()]
        real = [b for b in (p.read_bytes() for p in files) if b[128:132] == b"DICM"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vendor_floor = max(_rate(real, lambda ds: None), _rate(real, lambda ds: None))
            print(
                f"\nvendor files (../shared/data/dcm_qa, {len(real)} files, "
                f"~{sum(map(len, real)) // len(real) // 1024} KB), end to end:"
            )
            print(f"{'floor (read + write)':24s} {vendor_floor:12.0f} (1.00x)")
            for name, e in engines.items():
                rate = _rate(real, e.apply)  # type: ignore[arg-type]
                own = _rate(real, e.apply, 2, _lake_write)  # type: ignore[arg-type]
                print(
                    f"{'lake ' + name:24s} {rate:12.0f} ({rate / vendor_floor:4.2f}x)"
                    f" {own:12.0f} ({own / vendor_floor:4.2f}x)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
