"""Start-up: wall time of short `lake` commands against a bare interpreter, same run.

    python benchmarks/bench_startup.py [--repeat 9] [--against OTHER/.venv/bin/lake]

Each command is a new process, as a user runs it. The baseline is ``python -c pass`` (the
interpreter alone). Goals (issue 14.1): ``lake --help`` < 0.3 s, ``lake sql`` on a small
lake < 0.5 s. ``lake export nifti`` of a one-series cohort (CT_small) shows what an export
pays before and around its work: the converter's imports (pydicom, nibabel, numpy, pyarrow);
its goal against dcm2niix is measured by bench_scheduling.py (issue 14.2). The median and
the best of ``--repeat`` runs are printed with the CPU time the run used (user + system),
which the load of other jobs on the machine moves much less.
``--against`` runs the ``lake`` commands of another checkout's ``lake`` too (e.g. main's, for
a before/after in the same run), interleaved with this one's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAKE = str(Path(sys.executable).with_name("lake"))


def _timed(args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--against", help="another `lake` executable to time alongside")
    args = parser.parse_args(argv)

    from pydicom.data import get_testdata_file

    import lake
    from lake.export import create_cohort

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        lk = lake.init(root / "lake", vault=root / "vault")
        files = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm")]
        lk.ingest([str(f) for f in files if f], vault=root / "vault", scheduler="sync")
        create_cohort(lk, "ct", "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'")
        small = str(root / "lake")
        exports = iter(range(10**6))
        commands: list[tuple[str, list[str], float | None]] = [
            ("python -c pass (baseline)", [sys.executable, "-c", "pass"], None),
            ("python -c 'import lake'", [sys.executable, "-c", "import lake"], None),
            ("lake --help", [LAKE, "--help"], 0.3),
            ("lake sql (2-row lake, count(*))",
             [LAKE, "sql", "--lake", small, "SELECT count(*) FROM instances"], 0.5),
            ("lake sql (series view)",
             [LAKE, "sql", "--lake", small, "SELECT * FROM series"], 0.5),
            ("lake info", [LAKE, "info", "--lake", small], None),
            ("lake export nifti (one CT slice, -q)",
             [LAKE, "export", "nifti", "ct", "--lake", small, "-q", "--out", "{out}"], None),
        ]
        if args.against:
            commands += [(f"{name} [against]", [args.against, *argv_[1:]], goal)
                         for name, argv_, goal in commands if argv_[0] == LAKE]
        print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
              f"median (best) of {args.repeat} runs")
        print(f"{'command':<46}{'wall s':>16}{'CPU s':>8}{'/ python':>10}  goal")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in commands}
        for _ in range(args.repeat):  # interleaved, so load hits every command alike
            for name, argv_, _goal in commands:  # each export into a new folder
                out = str(root / f"export-{next(exports)}")
                runs[name].append(_timed([a.replace("{out}", out) for a in argv_]))
        base = statistics.median(w for w, _ in runs[commands[0][0]])
        for name, _, goal in commands:
            walls = [w for w, _ in runs[name]]
            median = statistics.median(walls)
            cpu = statistics.median(c for _, c in runs[name])
            verdict = "" if goal is None else (
                f"< {goal} s: {'met' if median < goal else 'MISSED'}")
            print(f"{name:<46}{median:>9.3f} ({min(walls):.3f}){cpu:>8.3f}"
                  f"{median / base:>9.1f}x  {verdict}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
