"""Where a job should run: in this process or on a local Dask cluster, swept over job size.

    python benchmarks/bench_scheduling.py [--ingest 250,1000,2000,4000,8000] [--phi 1300]
                                          [--export 250,1000,2000,4000,8000] [--no-nifti]
                                          [--against LAKE_EXECUTABLE] [--against-tree CHECKOUT]

Every figure is the wall time of the `lake` command as a user runs it (a new process each
time, imports included), measured in the same run:

1. ``lake ingest`` of generated CT/MR corpora of growing size (and of the PHI-rich corpus of
   tests/deid_corpus.py) with ``--scheduler sync`` (in this process), ``processes`` (a local
   cluster, one worker per CPU) and the default ``auto``;
2. ``lake export dicom`` of cohorts of growing size from one lake, the same three ways;
3. a small NIfTI export (the 8 fMRI series of ``dcm_qa_stc``) against dcm2niix on the
   original files: the CLI (auto), the CLI on the process cluster, and ``export_nifti``
   called in an already running process. Goals (issue 14.2): the CLI within 5x of dcm2niix,
   in-process within 1.5x. ``--against`` adds the CLI of another checkout, ``--against-tree``
   the in-process export of another checkout's library (run in a process of its own),
   interleaved with this tree's: a before/after in the same window.

The crossover is the smallest size at which the cluster finished first; ``auto`` should
track the faster of the two on each line (lake.compute: INGEST_CROSSOVER, EXPORT_CROSSOVER).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._corpus import make_corpus, make_phi_corpus

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))
LAKE = str(Path(sys.executable).with_name("lake"))
#: ``../shared/data`` from the project root; LAKE_SHARED_DATA points elsewhere (a git worktree).
SHARED = Path(os.environ.get("LAKE_SHARED_DATA")
              or Path(__file__).resolve().parents[2] / "shared" / "data")
STC = SHARED / "vendors" / "dcm_qa_stc" / "In"
ENGINES = ("sync", "processes", "auto")


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _run(args: Sequence[str], env: dict[str, str], ok: tuple[int, ...] = (0, 3),
         lake: str = LAKE) -> float:
    started = time.perf_counter()
    proc = subprocess.run([lake, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode not in ok:
        raise SystemExit(f"lake {args[0]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return elapsed


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, LAKE_ROOT=str(root / "lake"), LAKE_VAULT=str(root / "vault"))


def _ingest_once(corpus: Path, engine: str, work: Path) -> float:
    import lake

    root = Path(tempfile.mkdtemp(dir=work))
    lake.init(root / "lake", vault=root / "vault")
    args = ["ingest", "-q", str(corpus)]
    if engine != "auto":
        args += ["--scheduler", engine]
    try:
        return _run(args, _env(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line ``seconds = a + b * size`` through ``points``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def _table(title: str, unit: str, rows: list[tuple[int, float, dict[str, float]]]) -> None:
    print(f"\n== {title} ==")
    print(f"{unit:>8} {'MB':>7} {'sync s':>8} {'processes s':>12} {'auto s':>8} "
          f"{'cluster/sync':>13}  faster")
    for size, mb, t in rows:
        ratio = t["processes"] / t["sync"]
        faster = "cluster" if ratio < 1 else "in-process"
        print(f"{size:>8,} {mb:>7.1f} {t['sync']:>8.2f} {t['processes']:>12.2f} {t['auto']:>8.2f} "
              f"{ratio:>12.2f}x  {faster}")
    if len(rows) < 2:
        return
    a_s, b_s = _fit([(size, t["sync"]) for size, _, t in rows])
    a_p, b_p = _fit([(size, t["processes"]) for size, _, t in rows])
    print(f"fit: sync {a_s:.2f} s + {b_s * 1000:.2f} ms/{unit[:-1] if unit.endswith('s') else unit}"
          f"; processes {a_p:.2f} s + {b_p * 1000:.2f} ms each")
    if b_p < b_s:
        print(f"crossover (where the lines meet): {(a_p - a_s) / (b_s - b_p):,.0f} {unit}")
    else:
        print("crossover: none (the cluster is not faster per item here)")


def _interleaved(runs: Mapping[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """The best wall time of each run, the runs interleaved ``repeat`` times (shared machine)."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best.get(name, float("inf")), run())
    return best


def _ingest_runs(folder: Path, work: Path) -> Mapping[str, Callable[[], float]]:
    return {e: partial(_ingest_once, folder, e, work) for e in ENGINES}


def bench_ingest(sizes: list[int], phi: int, work: Path, repeat: int) -> None:
    rows = []
    for n in sizes:
        folder = CACHE / f"corpus-{n}"
        paths = make_corpus(folder, n)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        rows.append((n, mb, _interleaved(_ingest_runs(folder, work), repeat)))
    _table(f"lake ingest, CT/MR corpus (wall s, CLI, best of {repeat})", "files", rows)
    if phi:
        folder = CACHE / f"phi-{phi}"
        paths = make_phi_corpus(folder, phi)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        times = _interleaved(_ingest_runs(folder, work), repeat)
        _table(f"lake ingest, PHI-rich corpus (wall s, CLI, best of {repeat})", "files",
               [(len(paths), mb, times)])


def _export_lake(n: int) -> Path:
    """A lake of ``n`` CT/MR instances (cached across runs)."""
    import lake

    root = CACHE / f"sched-export-lake-{n}"
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    corpus = CACHE / f"corpus-{n}"
    make_corpus(corpus, n)
    lk = lake.init(root / "lake", vault=root / "vault")
    lk.ingest([str(corpus)], vault=root / "vault", scheduler="processes")
    (root / "ready").touch()
    return root


def _export_once(name: str, engine: str, out: Path, env: dict[str, str]) -> float:
    args = ["export", "dicom", name, "--out", str(out), "-q"]
    if engine != "auto":
        args += ["--scheduler", engine]
    try:
        return _run(args, env)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_export(sizes: list[int], work: Path, repeat: int) -> None:
    import lake
    from lake.export import create_cohort

    root = _export_lake(max(sizes))
    lk = lake.open(root / "lake")
    env = _env(root)
    rows = []
    for n in sizes:
        name = f"first-{n}"
        cohort = create_cohort(
            lk, name,
            f"SELECT SeriesInstanceUID FROM series ORDER BY SeriesInstanceUID LIMIT {n // 50}",
            replace=True,
        )

        runs = {e: partial(_export_once, name, e, work / f"export-{n}-{e}", env) for e in ENGINES}
        rows.append((len(cohort.members), cohort.pixel_bytes / 1e6, _interleaved(runs, repeat)))
    _table(f"lake export dicom (wall s, CLI, best of {repeat})", "inst", rows)


class _Resident:
    """``export_nifti`` in a Python process kept running, importing ``lake`` from another
    checkout (``tree``): its in-process figure, interleaved with this tree's in the same run.
    Each call exports the cohort once and returns the child's own wall and CPU seconds
    (user + system of the child, threads included)."""

    _CODE = (
        "import sys, time, lake\n"
        "from lake.export import export_nifti, load_cohort\n"
        "lk = lake.open(sys.argv[1]); cohort = load_cohort(lk, sys.argv[2])\n"
        "for line in sys.stdin:\n"
        "    c, w = time.process_time(), time.perf_counter()\n"
        "    export_nifti(lk, cohort, line.strip())\n"
        "    print(time.perf_counter() - w, time.process_time() - c, flush=True)\n"
    )

    def __init__(self, tree: Path, lake_root: Path, cohort: str, work: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(  # cwd=tree: its lake/ comes first on sys.path
            [sys.executable, "-c", self._CODE, str(lake_root), cohort], cwd=tree, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.work = work
        self.count = 0
        self()  # warm: imports, as in a notebook that already used the lake

    def __call__(self) -> tuple[float, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        self.proc.stdin.write(f"{self.work / f'r{self.count}'}\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def bench_small_nifti(work: Path, repeat: int, against: str | None = None,
                      against_tree: Path | None = None) -> None:
    if not STC.is_dir() or shutil.which("dcm2niix") is None:
        print(f"\n(small NIfTI export skipped: {STC} or dcm2niix absent)")
        return
    import lake
    from lake.export import create_cohort, export_nifti

    files = [p for p in STC.rglob("*") if p.is_file()]
    print(f"\n== small NIfTI export: dcm_qa_stc, {len(files)} files, "
          f"{sum(p.stat().st_size for p in files) / 1e6:.0f} MB ==")
    root = work / "stc"
    lk = lake.init(root / "lake", vault=root / "vault")
    lk.ingest([str(STC)], vault=root / "vault", scheduler="sync")
    cohort = create_cohort(lk, "stc", "SELECT SeriesInstanceUID FROM series")
    env = _env(root)
    count = iter(range(10**6))

    def dcm2niix() -> float:
        out = work / f"d{next(count)}"
        out.mkdir()
        started = time.perf_counter()
        subprocess.run(["dcm2niix", "-b", "y", "-z", "n", "-o", str(out), str(STC)],
                       check=True, capture_output=True)
        return time.perf_counter() - started

    def cli(*extra: str, lake: str = LAKE) -> Callable[[], float]:
        return lambda: _run(["export", "nifti", "stc", "--out", str(work / f"c{next(count)}"),
                             "-q", *extra], env, ok=(0, 4), lake=lake)

    def imports() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", _EXPORT_IMPORTS], check=True)
        return time.perf_counter() - started

    def in_process() -> float:
        started = time.perf_counter()
        export_nifti(lk, cohort, work / f"i{next(count)}")
        return time.perf_counter() - started

    in_process()  # warm: imports, as in a notebook that already used the lake
    print(f"load average {os.getloadavg()[0]:.2f}; wall s: median (best) of {repeat} runs, "
          "interleaved; CPU s: median per run (user + system of this process and its "
          "children: the load moves it much less)")
    lines: list[tuple[str, Callable[[], float | tuple[float, float]], float | None]] = [
        ("dcm2niix (originals)", dcm2niix, None),
        ("lake export nifti (CLI, auto)", cli(), 5.0),
        ("lake export nifti (CLI, --scheduler sync)", cli("--scheduler", "sync"), 5.0),
        ("lake export nifti (CLI, processes)", cli("--scheduler", "processes"), None),
        ("export_nifti in-process (auto)", in_process, 1.5),
        ("  floor: its imports alone, no work", imports, None),
    ]
    if against:  # another checkout's lake (e.g. main's): a before/after in the same run
        lines.insert(2, ("  the same, --against's lake", cli(lake=against), 5.0))
    resident = None
    if against_tree is not None:  # another checkout's library, in a process of its own
        resident = _Resident(against_tree, root / "lake", "stc", work)
        lines.insert(-1, ("  the same, --against-tree's lake/", resident, 1.5))
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in lines}
    for _ in range(repeat):  # interleaved: the load of other jobs hits every line alike
        for label, run, _goal in lines:
            cpu = _cpu()
            measured = run()
            # (the resident process reports its own wall and CPU seconds)
            runs[label].append(measured if isinstance(measured, tuple)
                               else (measured, _cpu() - cpu))
    if resident is not None:
        resident.close()
    ref = statistics.median(w for w, _ in runs[lines[0][0]])
    # The CPU ratio too: on a shared machine the load moves it much less than the wall ratio
    # (the goal is stated in wall time, which equals CPU time for a one-core command when a
    # core is free)
    ref_cpu = statistics.median(c for _, c in runs[lines[0][0]])
    for label, _line, goal in lines:
        walls = [w for w, _ in runs[label]]
        median = statistics.median(walls)
        used = statistics.median(c for _, c in runs[label])
        verdict = "" if goal is None else (
            f"  goal <= {goal}x: {'met' if median / ref <= goal else 'MISSED'}")
        print(f"{label:<42}{median:>7.3f} s ({min(walls):.3f}) CPU {used:.3f}  "
              f"{median / ref:6.1f}x dcm2niix (CPU {used / ref_cpu:4.1f}x){verdict}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


#: What `lake export nifti -q` imports, without running anything, and the console script's
#: exit (pipelines.cli._exit_now: no interpreter teardown): the floor of its start-up (the CLI:
#: typer, without pydantic since pipelines/_params.py, nor rich with -q; the catalog: pyarrow
#: without its compute module, deltalake; the converter: numpy, pydicom, nibabel). A local
#: lake needs no fsspec, and the console script imports pydicom without requests
#: (pipelines.cli.main's finder).
_EXPORT_IMPORTS = (
    "import sys, pipelines.cli; "
    "sys.meta_path.insert(0, pipelines.cli._PydicomDownloadsWithoutRequests()); "
    "import pipelines.export, "
    "lake.catalog, lake.export._cohort, lake.export._to_nifti, lake.nifti._convert, "
    "lake.nifti._write, lake.nifti._part10, pyarrow.parquet; import os; os._exit(0)"
)


def _cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", default="250,1000,2000,4000,8000")
    parser.add_argument("--phi", type=int, default=1300, help="PHI-rich files (0: skip)")
    parser.add_argument("--export", default="250,1000,2000,4000,8000")
    parser.add_argument("--no-nifti", action="store_true")
    parser.add_argument("--repeat", type=int, default=5,
                        help="small NIfTI export: interleaved runs of each line")
    parser.add_argument("--sweep-repeat", type=int, default=2, help="sweep repeats")
    parser.add_argument("--against", help="another `lake` executable for the small export")
    parser.add_argument("--against-tree", type=Path,
                        help="another checkout (the folder holding its lake/) for the small "
                             "export in-process, interleaved with this tree's")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        work = Path(tmp)
        if not args.no_nifti:
            bench_small_nifti(work, args.repeat, args.against, args.against_tree)
        if args.ingest:
            bench_ingest(_sizes(args.ingest), args.phi, work, args.sweep_repeat)
        if args.export:
            bench_export(_sizes(args.export), work, args.sweep_repeat)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
