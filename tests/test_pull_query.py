"""Safe pulls (issue 15.6): an empty query is refused unless --all; values are checked like
C-FIND keys before any PACS is contacted (usage error, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from lake.net._pull_query import pull_identifier
from tests.net_peers import free_port

LAKE = str(Path(sys.executable).with_name("lake"))

GOOD = [
    ["PatientID=12345"],
    ["StudyDate=20200101-20201231", "ModalitiesInStudy=CT\\MR"],
    ["StudyDate=20200101-"],
    ["StudyDate=-20201231"],
    ["StudyTime=0800-1230.5"],
    ["PatientName=DOE^J*"],
    ["StudyInstanceUID=1.2.840.113619.2.1\\1.3.6.1"],
    ["AccessionNumber=A?123"],
    ["PatientID=12345", "StudyDescription"],  # a return key next to a matching key
]
BAD = {
    "empty": [],
    "only return keys": ["PatientID", "StudyDate="],
    "only a universal wildcard": ["PatientID=*"],
    "month 13": ["StudyDate=20201301"],
    "dashed date": ["StudyDate=2020-01-01"],
    "range backwards": ["StudyDate=20201231-20200101"],
    "date list": ["StudyDate=20200101\\20200102"],
    "hour 25": ["StudyTime=2500"],
    "uid wildcard": ["StudyInstanceUID=1.2.*"],
    "uid leading zero": ["StudyInstanceUID=1.02.3"],
    "lower-case code string": ["ModalitiesInStudy=ct"],
    "too long": ["AccessionNumber=" + "1" * 17],
    "not a number": ["NumberOfStudyRelatedSeries=many"],
    "control character": ["PatientID=12\n34"],
    "unknown keyword": ["PatientNmae=DOE"],
}


@pytest.mark.parametrize("filters", GOOD)
def test_valid_queries(filters: list[str]) -> None:
    identifier = pull_identifier(filters)
    assert identifier.QueryRetrieveLevel == "STUDY"


@pytest.mark.parametrize("name", sorted(BAD))
def test_refused_queries(name: str) -> None:
    with pytest.raises(lake.QueryError):
        pull_identifier(BAD[name])


def test_all_allows_the_empty_query() -> None:
    assert pull_identifier([], all_studies=True).QueryRetrieveLevel == "STUDY"


def test_cli_exit_codes(lk: lake.Lake, lake_root: Path, vault_dir: Path) -> None:
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    peer = f"PACS@127.0.0.1:{free_port()}"  # nothing listens: only a valid query gets that far

    def pull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LAKE, "pull", "--from", peer, "--timeout", "5", *args],
            env=env,
            capture_output=True,
            text=True,
        )

    empty = pull()
    assert empty.returncode == 2 and "--all" in empty.stderr
    bad = pull("--query", "StudyDate=20201301")
    assert bad.returncode == 2 and "StudyDate" in bad.stderr
    for args in (["--all"], ["--query", "PatientID=12345"]):
        unreachable = pull(*args)
        assert unreachable.returncode == 1, unreachable.stderr  # the PACS cannot be reached
