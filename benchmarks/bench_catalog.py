"""The catalog at 1 and 10 million instances: latencies against goals, same run.

    python benchmarks/bench_catalog.py [--rows 1000000,10000000] [--repeat 7]

Builds (once; cached under ``.bench/catalog/``) lakes whose ``instances`` table holds that
many rows of realistic width: every row is a real de-identified instance row (header JSON and
Part-10 header bytes at their real sizes) given new identity (benchmarks/_catalog_data.py),
written through the lake's own commit path (``DeltaTables.append``) in commits of 50,000
rows. Then times, as a user meets them:

- opening the catalog (what every ``lake sql`` pays before its query);
- a cohort query over the ``series`` view, ``count(*)``, one SOPInstanceUID (``SELECT *``),
  the studies of one month (``SELECT * FROM studies``), each the median of ``--repeat`` runs
  on one open catalog;
- one SOPInstanceUID through the lookup API (``lake.query.InstanceLookup``), the same row;
- C-FIND at STUDY level through the query index the DICOM and web services use
  (``lake.query``): building it, then the median of a one-month StudyDate query;
- creating a cohort of ~100,000 member instances (``create_cohort``).

Goals (issue 14.5), at 10 million rows: series < 300 ms, count(*) < 50 ms, one UID < 50 ms,
date range < 200 ms, C-FIND STUDY < 50 ms, cohort of 100,000 < 2 s; at 1 million rows no
figure worse than before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LAKE_BENCH_CATALOG", ROOT / ".bench" / "catalog"))
SHARED = Path(os.environ.get("LAKE_SHARED_DATA") or ROOT.parent / "shared" / "data")
PHI = CACHE / "phi-600"
COMMIT_ROWS = 50_000
LAYOUT = 3  # bump when the lake's file layout changes: cached lakes are rebuilt
COHORT_MEMBERS = 100_000

Timing = tuple[float, float, float]
"""(median wall ms, first wall ms, median CPU ms of this process, DuckDB's threads included)."""

GOALS_MS = {
    "series cohort query": 300,
    "count(*)": 50,
    "one SOPInstanceUID": 50,
    "one SOPInstanceUID (lookup API)": 50,
    "studies in one month": 200,
    "C-FIND STUDY, one month": 50,
    "cohort of ~100,000 instances": 2000,
}


def _append(lk: Any, table: Any) -> None:
    from lake.catalog import INSTANCES

    lk.tables.append(INSTANCES, table)


def build(rows: int) -> Path:
    """A lake of ``rows`` generated instance rows (cached)."""
    import lake
    from benchmarks._catalog_data import Generator, templates

    root = CACHE / f"lake-v{LAYOUT}-{rows}"
    facts = root / "facts.json"
    if facts.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    table = templates(CACHE, SHARED, PHI)
    lk = lake.init(root / "lake", vault=root / "vault")
    from lake.catalog import INSTANCES

    generator = Generator(table, INSTANCES.schema)
    started = time.perf_counter()
    done = 0
    probe = ""
    for batch in generator.batches(rows, COMMIT_ROWS):
        _append(lk, batch)
        done += batch.num_rows
        if not probe and done >= rows // 2:
            probe = str(batch.column("SOPInstanceUID")[batch.num_rows // 3].as_py())
        print(f"\r  writing {rows:,} rows: {done:,} ({time.perf_counter() - started:.0f} s)",
              end="", flush=True)
    print()
    lk.refresh()
    window = _cohort_window(lk)
    files = lk.tables.open("instances").file_uris()
    size = sum(Path(u.replace("file://", "")).stat().st_size for u in files)
    facts.write_text(json.dumps({
        "rows": rows, "probe_uid": probe, "cohort_from": window[0], "cohort_to": window[1],
        "seconds": time.perf_counter() - started, "parquet_bytes": size, "files": len(files),
    }))
    return root


def compacted(rows: int) -> Path:
    """The lake of :func:`build` after ``lake.steward.compact`` (cached as a copy)."""
    import lake
    from lake.steward import compact

    source = build(rows)
    root = CACHE / f"lake-v{LAYOUT}-{rows}-compacted"
    facts = root / "facts.json"
    if facts.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source, root)
    (root / "facts.json").unlink()
    started = time.perf_counter()
    done = compact(lake.open(root / "lake"), target_mb=512)
    seconds = time.perf_counter() - started
    data = json.loads((source / "facts.json").read_text())
    instances = next(c for c in done if c.table == "instances")
    lk = lake.open(root / "lake")
    files = lk.tables.open("instances").file_uris()
    data.update(compact_seconds=seconds, files_removed=instances.files_before,
                files=len(files), parquet_bytes=sum(
                    Path(u.replace("file://", "")).stat().st_size for u in files))
    facts.write_text(json.dumps(data))
    return root


def _cohort_window(lk: Any) -> tuple[str, str]:
    """A SeriesDate window from 2010-01-01 holding ~COHORT_MEMBERS instances."""
    counts = lk.sql(
        "SELECT SeriesDate AS d, count(*) AS n FROM instances WHERE SeriesDate >= DATE "
        "'2010-01-01' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    total = 0
    for day, n in counts:
        total += n
        if total >= COHORT_MEMBERS:
            return "2010-01-01", day.isoformat()
    return "2010-01-01", counts[-1][0].isoformat()


def _median_ms(run: Callable[[], object], repeat: int) -> Timing:
    """(median, first, median CPU) in ms. CPU time counts every thread of this process: on a
    machine loaded by other jobs it moves much less than wall time."""
    times, cpu = [], []
    for _ in range(repeat):
        started, used = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - used) * 1000)
    return statistics.median(times), times[0], statistics.median(cpu)


def _note(results: dict[str, Timing], name: str, value: Timing) -> None:
    results[name] = value
    if name.startswith("("):  # a count, not a time
        print(f"    {name:<32}{value[0]:>10,.0f}", flush=True)
    else:
        print(f"    {name:<32}{value[0]:>10.1f} ms (first {value[1]:.0f}, CPU {value[2]:.0f}; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)


def measure(root: Path, repeat: int, skip: set[str]) -> dict[str, Timing]:
    import lake
    from lake.catalog import write_rep_headers

    facts = json.loads((root / "facts.json").read_text())
    lk = lake.open(root / "lake")
    results: dict[str, Timing] = {}
    # A lake cached before the summaries kept representative headers gets them once
    # (what a commit writes for its own files; lake/catalog/_summary.py; only the query
    # index reads them: a run without C-FIND writes nothing into the cached lakes).
    if "cfind" not in skip and (written := write_rep_headers(lk.tables)):
        print(f"    (wrote the representative headers of {written} data files)", flush=True)

    def open_catalog() -> None:
        lk.refresh()
        lk.catalog()

    _note(results, "open the catalog", _median_ms(open_catalog, 3))
    for name, sql in _queries(facts).items():
        if "queries" in skip and name != "one SOPInstanceUID":
            continue
        rows = lk.sql(sql).fetchall()
        assert rows, name
        _note(results, name, _median_ms(partial(_fetch, lk, sql), repeat))
    # Where the time of one SOPInstanceUID goes (docs/performance.md): the same lookup of
    # one column, and SELECT * of a UID no row holds (row groups pruned, none read).
    for name, sql in _uid_parts(facts).items():
        _note(results, name, _median_ms(partial(_fetch, lk, sql), repeat))
    _lookup(lk, facts, results, repeat)

    if "cfind" not in skip:
        _cfind_guarded(root, results, repeat)
    if "cohort" not in skip:
        _cohort(lk, facts, results)
    return results


def _lookup(lk: Any, facts: dict[str, Any], results: dict[str, Timing], repeat: int) -> None:
    """One SOPInstanceUID through ``lake.query.InstanceLookup`` (DuckDB finds the file and
    row reading the UID column only, pyarrow reads that row group): on one open lookup,
    as the SQL figure is on one open catalog; then opening a lookup and fetching once."""
    from lake.query import InstanceLookup, instance_row

    uid = facts["probe_uid"]
    want = lk.sql(f"SELECT * FROM instances WHERE SOPInstanceUID = '{uid}'").fetchall()
    with InstanceLookup(lk.tables) as lookup:
        got = lookup.row(uid)
        assert got is not None and tuple(got.values()) == want[0], "lookup != SELECT *"
        _note(results, "one SOPInstanceUID (lookup API)",
              _median_ms(partial(lookup.row, uid), repeat))
        _note(results, "lookup API, no such UID", _median_ms(partial(lookup.row, "2.25.0"),
                                                               repeat))
    _note(results, "lookup API, opened per call",
          _median_ms(partial(instance_row, lk.tables, uid), repeat))


OLD_VIEWS = """
CREATE TEMP VIEW series AS SELECT SeriesInstanceUID, any_value(StudyInstanceUID) AS
 StudyInstanceUID, any_value(Modality) AS Modality, any_value(SeriesDate) AS SeriesDate,
 count(*) AS instance_count, sum(size_bytes) AS size_bytes, count(DISTINCT pixel_hash) AS
 distinct_pixel_blobs FROM instances GROUP BY SeriesInstanceUID;
CREATE TEMP VIEW studies AS SELECT StudyInstanceUID, any_value(PatientID) AS PatientID,
 any_value(StudyDate) AS StudyDate, list_sort(list_distinct(list(Modality) FILTER (WHERE
 Modality IS NOT NULL))) AS ModalitiesInStudy, count(DISTINCT SeriesInstanceUID) AS
 NumberOfStudyRelatedSeries, count(*) AS NumberOfStudyRelatedInstances, sum(size_bytes) AS
 size_bytes FROM instances GROUP BY StudyInstanceUID
"""


def measure_old_path(root: Path) -> dict[str, Timing]:
    """The read path before this work, rebuilt here as the same-run baseline: the Delta
    table registered in DuckDB as an Arrow dataset, views aggregating instance rows."""
    import duckdb

    import lake

    facts = json.loads((root / "facts.json").read_text())
    lk = lake.open(root / "lake")
    results: dict[str, Timing] = {}
    con = duckdb.connect()
    started = time.perf_counter()
    con.register("instances", lk.tables.dataset("instances"))
    for statement in OLD_VIEWS.split(";"):
        con.execute(statement)
    _note(results, "open the catalog", ((time.perf_counter() - started) * 1000,) * 3)
    for name, sql in _queries(facts).items():
        _note(results, name, _median_ms(partial(_fetch_con, con, sql), 1))
    con.close()
    _old_cfind(lk, results)
    return results


def _old_cfind(lk: Any, results: dict[str, Timing]) -> None:
    """C-FIND over an index holding a row per instance, the design before the summaries
    (kept for cohort-scoped grants: here scoped to every instance of the catalog)."""
    from lake.query import Level, Snapshot, identifier_from_filters, parse_identifier

    uids = [r[0] for r in lk.sql("SELECT SOPInstanceUID FROM instances").fetchall()]
    started, used = time.perf_counter(), time.process_time()
    snapshot = Snapshot(lk.tables, lk.version, members=[(lk.version, uids)])
    build_ms = (time.perf_counter() - started) * 1000
    del uids
    try:
        _note(results, "C-FIND index build",
              (build_ms, build_ms, (time.process_time() - used) * 1000))
        level, keys = parse_identifier(
            identifier_from_filters(["StudyDate=20150301-20150331", "PatientID",
                                     "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]),
            list(Level),
        )
        _note(results, "C-FIND STUDY, one month",
              _median_ms(lambda: snapshot.find(level, keys), 3))
    finally:
        snapshot.close()


def _fetch_con(con: Any, sql: str) -> object:
    return con.sql(sql).fetchall()


def _queries(facts: dict[str, Any]) -> dict[str, str]:
    return {
        "series cohort query": "SELECT SeriesInstanceUID FROM series WHERE Modality = 'MR' "
        "AND SeriesDate BETWEEN DATE '2016-01-01' AND DATE '2016-06-30' AND instance_count >= 20",
        "count(*)": "SELECT count(*) FROM instances",
        "one SOPInstanceUID": f"SELECT * FROM instances WHERE SOPInstanceUID = "
        f"'{facts['probe_uid']}'",
        "studies in one month": "SELECT * FROM studies WHERE StudyDate BETWEEN "
        "DATE '2015-03-01' AND DATE '2015-03-31'",
    }


def _uid_parts(facts: dict[str, Any]) -> dict[str, str]:
    return {
        "UID lookup, one column": "SELECT SOPInstanceUID FROM instances WHERE "
        f"SOPInstanceUID = '{facts['probe_uid']}'",
        "UID lookup, no such UID": "SELECT * FROM instances WHERE "
        "SOPInstanceUID = '2.25.0'",
    }


def _fetch(lk: Any, sql: str) -> object:
    return lk.sql(sql).fetchall()


CFIND_RSS_LIMIT = 4 * 2**30


def _cfind_guarded(root: Path, results: dict[str, Timing], repeat: int) -> None:
    """C-FIND measured in a child process, stopped if it holds more than CFIND_RSS_LIMIT
    (an index that copies every row into memory would take the shared machine down)."""
    import subprocess

    import psutil

    child = subprocess.Popen(
        [sys.executable, __file__, "--cfind-child", str(root), "--repeat", str(repeat)],
        stdout=subprocess.PIPE, text=True,
    )
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        if peak > CFIND_RSS_LIMIT:
            child.kill()
            child.wait()
            print(f"    C-FIND index: stopped at {peak / 2**30:.1f} GB of memory "
                  f"(limit {CFIND_RSS_LIMIT / 2**30:.0f} GB)", flush=True)
            return
        time.sleep(0.1)
    out = child.stdout.read() if child.stdout else ""
    for name, value in json.loads(out.strip().splitlines()[-1]).items():
        _note(results, name, (float(value[0]), float(value[1]), float(value[2])))
    _note(results, "(C-FIND peak memory, MB)", (peak / 2**20,) * 3)


def _cfind_child(root: Path, repeat: int) -> None:
    import lake

    results: dict[str, Timing] = {}
    _cfind(lake.open(root / "lake"), results, repeat, quiet=True)
    print(json.dumps(results))


def _cfind(lk: Any, results: dict[str, Timing], repeat: int,
           quiet: bool = False) -> None:
    def note(into: dict[str, Timing], name: str, value: Timing) -> None:
        if quiet:
            into[name] = value
        else:
            _note(into, name, value)

    from lake.query import Level, SnapshotCache, identifier_from_filters, parse_identifier
    from lake.web._qido import search

    # What `lake serve dicom` does on a C-FIND (lake/net/_server.py: _on_find): the
    # SnapshotCache's current snapshot (checked against the newest Delta version on every
    # call), then find(); the first call after start builds the index.
    cache = SnapshotCache(lk.tables)
    try:
        started, used = time.perf_counter(), time.process_time()
        cache.current()
        build_ms = (time.perf_counter() - started) * 1000
        note(results, "C-FIND index build",
             (build_ms, build_ms, (time.process_time() - used) * 1000))
        level, keys = parse_identifier(
            identifier_from_filters(["StudyDate=20150301-20150331", "PatientID",
                                     "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]),
            list(Level),
        )
        assert cache.current().find(level, keys)
        note(results, "C-FIND STUDY, one month",
             _median_ms(lambda: cache.current().find(level, keys), repeat))
        study = cache.current().find(level, keys)[0].StudyInstanceUID
        series_keys = parse_identifier(identifier_from_filters(
            ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID",
             "Modality", "NumberOfSeriesRelatedInstances"]), list(Level))
        note(results, "C-FIND SERIES, one study",
             _median_ms(lambda: cache.current().find(*series_keys), repeat))
        series = cache.current().find(*series_keys)[0].SeriesInstanceUID
        image_keys = parse_identifier(identifier_from_filters(
            ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
             f"SeriesInstanceUID={series}", "SOPInstanceUID", "InstanceNumber"]), list(Level))
        note(results, "C-FIND IMAGE, one series",
             _median_ms(lambda: cache.current().find(*image_keys), repeat))
    finally:
        cache.close()
    # QIDO-RS as `lake serve web` answers it (lake/web/_qido.py: search over the snapshot of
    # lake/web/_views.py), in a fresh index: the first search after the server starts, then
    # the same search again. PS3.18's default study attributes include header attributes
    # (PatientName, AccessionNumber...), read from the stored headers of each study.
    params = [("StudyDate", "20150301-20150303")]
    cache = SnapshotCache(lk.tables)
    try:
        started, used = time.perf_counter(), time.process_time()
        found, _ = search(cache.current(), "studies", params, {}, "http://lake")
        first_ms = (time.perf_counter() - started) * 1000
        assert found
        note(results, "QIDO first search (3 days)",
             (first_ms, first_ms, (time.process_time() - used) * 1000))
        note(results, "QIDO same search again",
             _median_ms(lambda: search(cache.current(), "studies", params, {}, "http://lake"),
                        repeat))
    finally:
        cache.close()


def _cohort(lk: Any, facts: dict[str, Any], results: dict[str, Timing]) -> None:
    from lake.export import create_cohort

    sql = (f"SELECT SeriesInstanceUID FROM series WHERE SeriesDate BETWEEN "
           f"DATE '{facts['cohort_from']}' AND DATE '{facts['cohort_to']}'")
    members: list[int] = []

    def cohort() -> None:
        members.append(len(create_cohort(lk, "bench-100k", sql, replace=True).members))

    _note(results, "cohort of ~100,000 instances", _median_ms(cohort, 3))
    _note(results, "(cohort members)", (float(members[-1]),) * 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip", default="", help="comma-separated: cfind, cohort, "
                        "queries (of the SQL queries only one SOPInstanceUID)")
    parser.add_argument("--old-path-up-to", type=int, default=1_000_000,
                        help="measure the old read path on lakes up to this many rows")
    parser.add_argument("--cfind-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cfind_child:
        _cfind_child(Path(args.cfind_child), args.repeat)
        return 0
    sizes = [int(x) for x in args.rows.split(",") if x]
    skip = set(args.skip.split(","))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    columns: dict[str, dict[str, Timing]] = {}
    for rows in sizes:
        label = f"{rows / 1e6:g}M"
        written, packed = build(rows), compacted(rows)
        for state, root in (("as written", written), ("compacted", packed)):
            facts = json.loads((root / "facts.json").read_text())
            extra = (f"; compacted in {facts['compact_seconds']:.0f} s"
                     if "compact_seconds" in facts else
                     f"; written in {facts['seconds']:.0f} s")
            print(f"\n{rows:,} rows {state}: {facts['files']} files, "
                  f"{facts['parquet_bytes'] / 1e9:.2f} GB of Parquet{extra}", flush=True)
            columns[f"{label} {state}"] = measure(root, args.repeat, skip)
        if rows <= args.old_path_up_to:
            print(f"\n{rows:,} rows as written, the old read path (one run each):", flush=True)
            columns[f"{label} old path"] = measure_old_path(written)
    names = list(dict.fromkeys(n for t in columns.values() for n in t))
    print(f"\n{'ms: median (first)':<30}" + "".join(f"{c:>21}" for c in columns) + "   goal")
    final = f"{max(sizes) / 1e6:g}M compacted"
    for name in names:
        cells = "".join(
            f"{col[name][0]:>12.1f} ({col[name][1]:>6.0f})" if name in col else f"{'-':>21}"
            for col in columns.values())
        goal = GOALS_MS.get(name)
        verdict = ""
        if goal is not None and max(sizes) >= 10_000_000:
            got = columns[final].get(name)
            verdict = f"   < {goal}: " + ("not run" if got is None else
                                         "met" if got[0] < goal else "MISSED")
        print(f"{name:<30}{cells}{verdict}")
    print(f"\n{'CPU ms (median), this process':<30}" + "".join(f"{c:>21}" for c in columns))
    for name in names:
        if not name.startswith("("):
            print(f"{name:<30}" + "".join(
                f"{col[name][2]:>21.1f}" if name in col else f"{'-':>21}"
                for col in columns.values()))
    for rows in sizes:
        label = f"{rows / 1e6:g}M"
        old, new = columns.get(f"{label} old path"), columns[f"{label} compacted"]
        if old:
            ratios = ", ".join(f"{n} {old[n][0] / new[n][0]:.0f}x" for n in old if n in new)
            print(f"{label}: old read path / compacted (>1: faster now): {ratios}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end; {dt.datetime.now():%Y-%m-%d %H:%M}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
