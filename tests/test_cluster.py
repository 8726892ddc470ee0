"""Ingest and export on a dask.distributed cluster give what they give in one process.

A LocalCluster of 1, 2 and 4 worker processes is started here and reached by its address, as
an external cluster is (``--scheduler tcp://...``): every task then runs on the workers.
"""

from __future__ import annotations

import logging
import operator
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import lake
from lake.export import ExportResult, create_cohort, export_dicom
from tests.series import write_ct_series

pytestmark = pytest.mark.slow

ROWS = "SELECT SOPInstanceUID, SeriesInstanceUID, pixel_hash, header_sha256, header_json FROM " \
       "instances ORDER BY SOPInstanceUID"


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"{n}-workers")
def cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=request.param, threads_per_worker=1, processes=True,
        dashboard_address=":0", silence_logs=logging.CRITICAL,
    ) as local:
        yield str(local.scheduler_address)


@pytest.fixture
def twins(tmp_path: Path) -> tuple[lake.Lake, lake.Lake, Path]:
    """Two lakes with the same key (one copied from the other before any ingest)."""
    vault = tmp_path / "vault"
    first = lake.init(tmp_path / "one", vault=vault)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    return first, lake.open(tmp_path / "two"), vault


def _files(result: ExportResult) -> list[tuple[str, str]]:
    return sorted((f.path, f.sha256) for f in result.files)


def test_cluster_ingest_and_export_match_one_process(
    cluster: str, twins: tuple[lake.Lake, lake.Lake, Path], tmp_path: Path, samples: Path
) -> None:
    local, remote, vault = twins
    write_ct_series(tmp_path / "ct", 20)
    sources = [str(tmp_path / "ct"), str(samples)]
    a = local.ingest(sources, vault=vault, scheduler="sync", batch_size=16)
    b = remote.ingest(sources, vault=vault, scheduler=cluster, batch_size=16)
    assert (a.ingested, a.quarantined, a.blobs_written) == (b.ingested, b.quarantined,
                                                            b.blobs_written)
    assert a.ingested > 20
    assert local.sql(ROWS).fetchall() == remote.sql(ROWS).fetchall()
    assert sorted(local.blobs.keys()) == sorted(remote.blobs.keys())

    query = "SELECT SeriesInstanceUID FROM series"
    one = export_dicom(local, create_cohort(local, "all", query), tmp_path / "e1",
                       scheduler="sync")
    two = export_dicom(remote, create_cohort(remote, "all", query), tmp_path / "e2",
                       scheduler=cluster)
    assert _files(one) == _files(two) and one.files


def test_tasks_in_flight_follow_the_clusters_threads(cluster: str) -> None:
    """Two tasks per worker thread of the cluster (not per CPU of the driver's machine), so
    that a cluster of several machines is kept busy; an explicit ``workers`` wins."""
    from distributed import Client

    from lake.compute import Runner

    with Client(cluster) as client:
        threads = sum(client.nthreads().values())
    with Runner(cluster) as runner:
        assert runner.window == 2 * threads
        done = sorted(runner.map(operator.add, range(3 * threads), 10))
    assert done == list(range(10, 10 + 3 * threads))
    with Runner(cluster, workers=5) as runner:
        assert runner.window == 10
