"""One open lake's SQL from many threads at once (lake/_lake.py, lake/catalog/_query.py).

A notebook's thread pool or a web server shares one :class:`lake.Lake`: ``lk.sql`` and
``lk.execute`` from any thread give the answers one thread alone gets, and a relation is
fetchable on the thread that got it. Each thread queries its own DuckDB connection to the
catalog's database (made on its first query), so none waits for, or is refused by, another
(DuckDB refuses a second call on a busy connection: "connection is busy").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lake

THREADS = 8
ROUNDS = 50


def _queries(lk: lake.Lake) -> dict[str, Callable[[], Any]]:
    """Every view, the Bloom filters' cursor path, a version and ``execute``; each call
    fetches its answer on the calling thread."""
    uids = [u for (u,) in lk.sql("SELECT SOPInstanceUID FROM instances ORDER BY 1").fetchall()]
    series = lk.sql("SELECT SeriesInstanceUID FROM series ORDER BY 1").fetchall()[0][0]
    first = lk.version - 1
    return {
        "count": lambda: lk.sql("SELECT count(*) FROM instances").fetchall(),
        "series": lambda: lk.sql("SELECT * FROM series ORDER BY SeriesInstanceUID").fetchall(),
        "studies": lambda: lk.sql("SELECT * FROM studies ORDER BY ALL").fetchall(),
        "patients": lambda: lk.sql("SELECT * FROM patients ORDER BY ALL").fetchall(),
        "batches": lambda: lk.sql("SELECT count(*) FROM batches").fetchall(),
        "quarantine": lambda: lk.sql("SELECT count(*) FROM quarantine").fetchall(),
        "join": lambda: lk.sql(
            "SELECT s.Modality, count(*) FROM instances i JOIN series s USING "
            "(SeriesInstanceUID) GROUP BY 1 ORDER BY 1").fetchall(),
        # pinned UIDs: the second such query on a catalog reads the files' Bloom filters
        "uid": lambda: lk.sql(
            f"SELECT SeriesInstanceUID FROM instances WHERE SOPInstanceUID = '{uids[3]}'"
        ).fetchall(),
        "uids": lambda: lk.sql(
            "SELECT count(*) FROM instances WHERE SOPInstanceUID IN "
            f"('{uids[0]}', '{uids[-1]}', '2.25.0')").fetchall(),
        "in series": lambda: lk.sql(
            f"SELECT count(*) FROM instances WHERE SeriesInstanceUID = '{series}'").fetchall(),
        "as_of": lambda: lk.sql("SELECT count(*) FROM series", as_of=first).fetchall(),
        "execute": lambda: lk._execute(
            "SELECT Modality, count(*) FROM instances GROUP BY 1 ORDER BY 1")[1],
        "made, then fetched": _made_then_fetched(lk),
    }


def _made_then_fetched(lk: lake.Lake) -> Callable[[], Any]:
    def run() -> Any:
        relation = lk.sql("SELECT PatientID, count(*) FROM instances GROUP BY 1 ORDER BY 1")
        lk.sql("SELECT count(*) FROM studies").fetchall()  # another query in between
        return relation.fetchall()

    return run


def test_one_lake_answers_many_threads_at_once(several: lake.Lake) -> None:
    lk = several
    queries = _queries(lk)
    expected = {name: run() for name, run in queries.items()}  # one thread alone
    assert all(expected.values()) and expected["uid"] and expected["uids"] == [(2,)]
    lk.refresh()  # the threads make the catalogs and the Bloom filters, at once
    names = list(queries)
    start = threading.Barrier(THREADS)

    def work(offset: int) -> list[tuple[str, Any]]:
        start.wait()
        answers = []
        for i in range(ROUNDS):
            name = names[(offset + i) % len(names)]
            answers.append((name, queries[name]()))
        return answers

    with ThreadPoolExecutor(THREADS) as pool:
        results = [f.result() for f in [pool.submit(work, t) for t in range(THREADS)]]
    # (was: QueryError "query failed: Resource In Use Error: connection is busy with another
    # call", or the same DuckDB error raised by a fetch)
    assert sum(len(r) for r in results) == THREADS * ROUNDS
    for answers in results:
        for name, answer in answers:
            assert answer == expected[name], name


def test_a_relation_is_fetched_on_the_thread_that_made_it(several: lake.Lake) -> None:
    """Relations made by one thread stay fetchable there while other threads query."""
    lk = several
    query = "SELECT SeriesInstanceUID, instance_count FROM series ORDER BY 1"
    expected = lk.sql(query).fetchall()
    start = threading.Barrier(THREADS)

    def work(_: int) -> bool:
        relations = [lk.sql(query) for _ in range(5)]
        start.wait()
        return all(r.fetchall() == expected for r in reversed(relations))

    with ThreadPoolExecutor(THREADS) as pool:
        assert all(pool.map(work, range(THREADS)))


def test_each_thread_has_one_connection_made_when_it_first_queries(several: lake.Lake) -> None:
    lk = several
    catalog = lk.catalog()
    assert catalog.connection() is catalog.con  # the thread that made it: its own

    def connections(_: int) -> tuple[int, int]:
        lk.sql("SELECT count(*) FROM instances").fetchall()
        return id(catalog.connection()), id(catalog.connection())

    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(connections, range(2)))
    assert all(first == again != id(catalog.con) for first, again in seen)
