"""When ingest's pool forks its workers (lake/compute/_pool.py ``fork_safe``; review s20 S1, S3):
the ``lake ingest`` command as users run it (progress bar on) forks them, and a process holding
a native thread (numpy's OpenBLAS) does not fork, whatever Python's own thread count says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lake

ROOT = Path(__file__).resolve().parents[1]

_CLI = """
import sys
import lake.compute._pool as pool

init = pool.Pool.__init__
record = sys.argv[1]

def recording(self, *args, **kwargs):
    init(self, *args, **kwargs)
    # lake.ingest._run.WORKER_MODULES: inherited by the fork, not imported by each worker
    loaded = all(name in sys.modules for name in ("lake.documents", "lake.nifti._derive"))
    with open(record, "a") as seen:
        seen.write(f"{self.forked},{loaded}\\n")

pool.Pool.__init__ = recording
from pipelines.cli import main

sys.argv = ["lake", *sys.argv[2:]]
main()
"""


def _env() -> dict[str, str]:
    # As a user's shell has it: nothing says how many threads OpenBLAS may start.
    return {key: value for key, value in os.environ.items()
            if key not in ("OPENBLAS_NUM_THREADS", "LAKE_DEBUG")}


@pytest.mark.parametrize("quiet", [False, True], ids=["progress-bar", "quiet"])
def test_lake_ingest_forks_its_pool_with_the_progress_bar_on(
    tmp_path: Path, quiet: bool
) -> None:
    """The progress bar used to start rich's refresh thread, so the default `lake ingest`
    never forked (only `-q` did); numpy's OpenBLAS thread is a native one the OS counts.
    The modules of the per-file work are loaded before the fork (each worker imported them
    at its first file), and loading them starts no thread: the pool still forks."""
    from pydicom.data import get_testdata_file

    source = tmp_path / "src"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(str(get_testdata_file(name)), source / name)
    lake_args = ["--lake", str(tmp_path / "lake"), "--vault", str(tmp_path / "vault")]
    subprocess.run([sys.executable, "-m", "pipelines.cli", "init", *lake_args], cwd=ROOT,
                   check=True, capture_output=True, env=_env())
    seen = tmp_path / "forked.txt"
    command = ["ingest", *lake_args, "--scheduler", "pool", "--workers", "2", str(source)]
    done = subprocess.run(
        [sys.executable, "-c", _CLI, str(seen), *command, *(["-q"] if quiet else [])],
        cwd=ROOT, text=True, capture_output=True, env=_env(), timeout=300)  # a hang guard
    assert done.returncode == 0, done.stderr
    assert seen.read_text().split() == ["True,True"]
    assert lake.open(tmp_path / "lake").sql("SELECT count(*) FROM instances").fetchall() \
        == [(3,)]


_NATIVE = """
import os
from lake.compute._pool import fork_safe, os_threads
import threading
assert "pyarrow" not in __import__("sys").modules
before = (os_threads(), fork_safe())
import numpy  # OpenBLAS starts OPENBLAS_NUM_THREADS - 1 threads of its own
print(before, threading.active_count(), os_threads(), fork_safe())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/task is Linux's")
def test_a_native_thread_keeps_the_pool_from_forking() -> None:
    """A library call must not fork a caller's process that holds native threads (Python
    sees one thread, the OS two): the count is the OS's, not a list of modules."""
    env = {**_env(), "OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _NATIVE], cwd=ROOT, text=True, env=env,
                          capture_output=True, timeout=120)  # a hang guard
    assert done.returncode == 0, done.stderr
    before, python_threads, os_count, forking = done.stdout.rsplit(" ", 3)
    assert before == "(1, True)"
    if os_count.strip() == "1":
        pytest.skip("this numpy's BLAS started no thread of its own")
    assert python_threads == "1"
    assert forking.strip() == "False"
