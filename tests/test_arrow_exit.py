"""Reading Delta tables never aborts the process at exit.

deltalake's pyarrow datasets read through a filesystem written in Python; Arrow's I/O threads
call back into Python and, when one is still busy as the interpreter exits, the process
aborts ("terminate called without an active exception"): `lake cohort list` exited with
134 in about one run of six. Local tables are read with Arrow's native filesystem instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

import lake
from lake.catalog import arrow_dataset


def test_local_tables_are_read_with_arrows_native_filesystem(
    lk: lake.Lake, ct_folder: Path, vault_dir: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    delta = lk.tables.open("instances")
    native = arrow_dataset(delta)
    assert isinstance(native.filesystem, pafs.LocalFileSystem)
    assert isinstance(lk.tables.dataset("instances").filesystem, pafs.LocalFileSystem)
    expected = delta.to_pyarrow_dataset().to_table(columns=["SOPInstanceUID"])
    got = native.to_table(columns=["SOPInstanceUID"])
    assert sorted(got.column(0).to_pylist()) == sorted(expected.column(0).to_pylist())
    assert native.schema == delta.to_pyarrow_dataset().schema


def test_short_processes_reading_tables_exit_cleanly(
    lk: lake.Lake, ct_folder: Path, vault_dir: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    script = (
        "import sys\n"
        "from deltalake import DeltaTable\n"
        "from lake.catalog import arrow_dataset\n"
        "table = arrow_dataset(DeltaTable(sys.argv[1])).to_table(columns=['SOPInstanceUID'])\n"
        "print(table.num_rows)\n"
    )
    uri = lk.tables.uri("instances")
    for _ in range(12):  # the abort came in about one run of three of this script
        proc = subprocess.run(
            [sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-300:])
        assert proc.stdout.strip() == "12"


def test_data_files_read_what_the_arrow_dataset_reads(
    lk: lake.Lake, ct_folder: Path, vault_dir: Path
) -> None:
    """DataFiles (pyarrow.parquet, no pandas) yields each data file's rows as the dataset's
    fragments do: same files in the same order, same rows, same column types; and
    python_rows converts zoned timestamps to the same datetimes as to_pylist; in_set selects
    the rows whose key is in a set."""
    from lake.catalog import data_files, in_set, python_rows, string_set

    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    for name in ("instances", "batches"):
        delta = lk.tables.open(name)
        dataset, files = arrow_dataset(delta), data_files(delta)
        assert list(files.paths) == [f.path for f in dataset.get_fragments()]
        assert files.schema == dataset.schema
        for path, fragment in zip(files.paths, dataset.get_fragments(), strict=True):
            columns = dataset.schema.names[::-1]  # any order, as asked
            expected = fragment.to_table(columns=columns, schema=dataset.schema)
            got = files.read(path, columns)
            assert got.equals(expected, check_metadata=True)
            assert python_rows(got) == expected.to_pylist()
            if name == "instances":  # every other instance, by its unique key
                every_other = string_set(got.column("SOPInstanceUID").to_pylist()[::2])
                chosen = got.filter(in_set(got.column("SOPInstanceUID"), every_other))
                assert chosen.to_pylist() == expected.to_pylist()[::2]


def test_in_set_selects_what_is_in_selects() -> None:
    """The buffer-built value set filters as ``pc.is_in`` over ``pa.array`` does, for string,
    large string and dictionary columns, non-ASCII and empty values too (DataFiles.read casts
    to the Delta schema, so no string_view reaches it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lake.catalog import in_set, string_set

    keys = ["1.2.3", "", "é.1", "1.2.30", "9", "1.2.3"]
    wanted = {"1.2.3", "é.1", "", "absent"}
    expected = [k for k in keys if k in wanted]
    for column in (pa.array(keys), pa.array(keys, pa.large_string()),
                   pa.array(keys).dictionary_encode()):
        table = pa.table({"k": column, "n": list(range(len(keys)))})
        got = table.filter(in_set(table.column("k"), string_set(wanted)))
        assert got.column("k").cast(pa.string()).to_pylist() == expected
        reference = table.filter(pc.is_in(column.cast(pa.string()), value_set=pa.array(sorted(wanted))))
        assert got.column("n").to_pylist() == reference.column("n").to_pylist()
    assert in_set(pa.array(keys), string_set(set())).true_count == 0
