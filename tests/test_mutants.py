"""The mutation corpus (tests/mutants.py) through file ingest and ``lake deid``: every mutant is
ingested or quarantined with a reason, ``lake deid`` answers each with its table or one line and
exit 1, and nothing crashes, hangs or prints a traceback."""

from __future__ import annotations

import functools
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import typer

import lake
from pipelines.profiles import deid_command
from tests.ingest_helpers import LAKE, ingest_cli, ingest_sync, summary_count
from tests.mutants import OPERATORS, mutants, write_mutants

COUNT = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mutants(tmp_path_factory.mktemp("mutants"), COUNT, seed=0)


def test_the_corpus_is_reproducible_and_covers_every_operator() -> None:
    first = list(mutants(60, seed=7))
    assert [m.data for m in first] == [m.data for m in mutants(60, seed=7)]
    assert {m.operator for m in mutants(COUNT)} == set(OPERATORS)
    assert len({m.data for m in mutants(COUNT)}) > COUNT * 0.8


def test_every_mutant_is_ingested_or_quarantined_with_a_reason(
    lk: lake.Lake, vault_dir: Path, corpus: list[Path]
) -> None:
    summary = ingest_sync(lk, vault_dir, corpus[0].parent)
    assert summary.files_seen + sum(summary.sources.skipped.values()) == COUNT
    assert summary.ingested + summary.duplicates + summary.quarantined == summary.files_seen
    rows = lk.sql("SELECT reason, message FROM quarantine").fetchall()
    assert 0 < len(rows) <= summary.quarantined  # one row per distinct file (identical mutants)
    assert all(reason and message for reason, message in rows)
    assert summary.ingested > 0 and summary.quarantined > COUNT / 3  # both paths exercised
    assert lk.verify().ok


def test_lake_deid_answers_every_mutant(
    corpus: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command itself on every mutant (the Typer app is exercised in the slow test below):
    its table and exit 0, or one line and exit 1; an exception escaping would fail here."""
    import lake.deid

    monkeypatch.setattr(lake.deid, "load_profile", functools.cache(lake.deid.load_profile))
    codes: Counter[int] = Counter()
    for path in corpus:
        try:
            deid_command(path, profile="basic", show_values=False)
            code = 0
        except typer.Exit as stop:
            code = stop.exit_code
        output = capsys.readouterr()
        assert code in (0, 1), (path.name, code)
        codes[code] += 1
        if code == 1:
            lines = output.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:"), (path.name, output.err)
        assert path.name not in output.out + output.err
        assert str(path.parent) not in output.out + output.err
    assert codes[0] > 0 and codes[1] > 0


@pytest.mark.slow
def test_the_commands_as_users_run_them(tmp_path: Path, corpus: list[Path]) -> None:
    """The real entry points (exit code 70 would mean an exception escaped): lake deid on a few
    mutants, lake ingest of the whole corpus on a two-process cluster."""
    one_each = {p.name.split(".")[1]: p for p in corpus}
    for operator, path in sorted(one_each.items())[::3]:
        proc = subprocess.run([LAKE, "deid", str(path)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode in (0, 1), (operator, proc.returncode, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    proc = ingest_cli(tmp_path, "--scheduler", "processes", "--workers", "2", str(corpus[0].parent))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    quarantined = summary_count(proc.stderr, "quarantined")
    assert quarantined is not None and quarantined > COUNT / 3
