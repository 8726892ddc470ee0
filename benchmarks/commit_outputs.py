"""What the catalog holds after ingesting the bench corpora and a DICOM receive, as digests.

    python benchmarks/commit_outputs.py TEMPLATE OUT.json

Proves that a change to the commit path keeps the catalog's content: run it from the trees
before and after with the same ``TEMPLATE`` (an empty lake and its vault, made by the first
run: ``TEMPLATE/lake``, ``TEMPLATE/vault``; each run works on a copy, so the de-identified
values are the same) and compare the two JSON files. Ingests (``scheduler="sync"``, batches of
50) the CT/MR bench corpus's first 200 files, the PHI-rich corpus and pydicom's test files,
then receives bench_net's 520 files with ``storescu`` over four associations into
``lake serve dicom``'s server (in this process, as ``bench_net.py`` runs it) and flushes it.
Then digests every table's rows (but ``batch_id``, ``ingested_at``, ``quarantined_at`` and the
other times, and the ``catalog_version`` of ``batches``), sorted, every summary kind's rows
(lists sorted, but ``data_file`` and the ingested-at bounds) and the ``series``, ``studies``
and ``patients`` views.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

import lake
from benchmarks._corpus import make_corpus, make_phi_corpus
from benchmarks.bench_net import CACHE, _split, storescu
from lake.catalog._summary import REP_HEADERS, SERIES_PARTS, STUDY_PARTS, SUMMARY_DIR
from lake.net import DicomServer, ServerConfig

_SKIP = {"batch_id", "ingested_at", "quarantined_at", "started_at", "finished_at",
         "catalog_version", "data_file", "first_ingested_at", "last_ingested_at", "laid_at"}


def _value(value: Any) -> Any:
    if isinstance(value, list):
        return sorted((_value(v) for v in value), key=repr)
    if isinstance(value, (dt.date, dt.datetime, bytes)):
        return repr(value)
    return value


def _digest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    kept = sorted(json.dumps({k: _value(v) for k, v in r.items() if k not in _SKIP},
                              sort_keys=True, default=repr) for r in rows)
    return {"rows": len(kept), "sha256": hashlib.sha256("\n".join(kept).encode()).hexdigest()}


def main() -> None:
    template, out = Path(sys.argv[1]), Path(sys.argv[2])
    if not (template / "lake").exists():
        lake.init(template / "lake", vault=template / "vault")
    from pydicom.data import get_testdata_files

    with tempfile.TemporaryDirectory(prefix="commit-outputs-") as scratch:
        root = Path(scratch)
        shutil.copytree(template, root / "t")
        lk = lake.open(root / "t" / "lake")
        vault = root / "t" / "vault"
        sources = [
            [str(p) for p in make_corpus(CACHE / "corpus-2000", 2000)[:200]],
            [str(p) for p in make_phi_corpus(CACHE / "phi-1300", 1300)],
            sorted(get_testdata_files("*")),
        ]
        for paths in sources:
            lk.ingest(paths, vault=vault, scheduler="sync", batch_size=50)
        folders = _split(make_corpus(CACHE / "net-corpus-520", 520)[0].parent, 4, root / "parts")
        server = DicomServer(lk, lk.secret(vault), ServerConfig(port=0, aet="ANY"))
        server.start()
        try:
            storescu(server.port, folders, True)
            server.flush()
        finally:
            server.stop()
        lk.refresh()
        found: dict[str, Any] = {}
        for name in sorted(lk.tables.location.fs.ls(lk.tables.location.join("tables"),
                                                  detail=False)):
            table = Path(name).name
            if lk.tables.exists(table):
                rows = lk.tables.open(table).to_pyarrow_table().to_pylist()
                found[f"table {table}"] = _digest(rows)
        summaries = Path(lk.tables.location.join("tables", "instances")) / SUMMARY_DIR
        for kind in (SERIES_PARTS, STUDY_PARTS, REP_HEADERS):
            rows = [r for p in sorted((summaries / kind).iterdir())
                    for r in pq.read_table(p).to_pylist()]
            found[f"summary {kind}"] = _digest(rows)
        for view in ("series", "studies", "patients"):
            relation = lk.sql(f"SELECT * FROM {view}")
            names = relation.columns
            found[f"view {view}"] = _digest([dict(zip(names, r, strict=True))
                                             for r in relation.fetchall()])
    out.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(json.dumps(found, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
