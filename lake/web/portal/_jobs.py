"""A small in-process job runner for the portal's exports: bounded, off the event loop.

Jobs run on a thread pool of a few workers (the export itself runs in that thread,
``scheduler="sync"``: the server does not start a Dask cluster per request). Each job
reports progress as (series done, series total). Jobs live as long as the server: a
restart forgets them (and their output folders go when the server stops). Closing the
runner asks running jobs to stop at their next progress report; an interrupted export
resumes when started again with the same arguments.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lake._errors import LakeError
from lake.steward import EXPORT_MEMBERS

__all__ = ["Job", "JobCancelledError", "JobRunner"]


class JobCancelledError(LakeError, RuntimeError):
    """The server is stopping: the job ended early (its export resumes when started again)."""


@dataclass
class Job:
    """One background job.

    Attributes
    ----------
    job_id : str
        Random id (names its folder and its pages).
    kind : str
        ``teaching``, ``case``, ``nifti``, ``bids`` or ``dicom``.
    cohort : str
        The cohort it works on.
    owner : str or None
        ``kind:id`` of the principal that started it; None for a shared job (a teaching
        set's zip, which every viewer of the set may fetch).
    folder : Path
        Its working folder.
    """

    job_id: str
    kind: str
    cohort: str
    owner: str | None
    folder: Path
    label: str = ""
    state: str = "queued"
    done: int = 0
    total: int = 0
    error: str = ""
    result: Path | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_at: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def available(self) -> bool:
        """Whether its zip may be served: made, and not withdrawn by ``lake forget`` (which
        removes the job's folder with its member list, :data:`lake.steward.EXPORT_MEMBERS`)."""
        return (self.result is not None and self.result.is_file()
                and (self.folder / EXPORT_MEMBERS).is_file())

    def as_dict(self, *, ready: bool) -> dict[str, object]:
        """What the progress endpoint answers; ``ready`` is whether its zip is served now
        (:func:`lake.web.portal._exports.servable`, the download's own check)."""
        return {"id": self.job_id, "state": self.state, "done": self.done, "total": self.total,
                "error": self.error, "ready": ready}


Work = Callable[[Job, Callable[[int, int], None]], Path]
"""A job's work: ``(job, on_progress) -> the file to download``."""


class JobRunner:
    """Runs jobs on at most ``workers`` threads.

    Parameters
    ----------
    folder : Path
        Where jobs get their working folders (jobs do not outlive a server).
    workers : int
        Jobs running at once; more wait in a queue.
    on_finish : callable, optional
        Called with each job when it finishes (the audit log).
    """

    def __init__(
        self,
        folder: Path,
        *,
        workers: int = 2,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        # Each runner (each server) works in a folder of its own below ``folder``, made on
        # the first job and removed when the runner closes; folders a crashed server left
        # are swept after a week.
        self.folder = folder / f"run-{secrets.token_hex(6)}"
        _sweep(folder)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lake-portal-job")
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._shared: dict[str, str] = {}
        self._closing = threading.Event()
        self._on_finish = on_finish

    def submit(
        self, kind: str, cohort: str, owner: str | None, work: Work, *, label: str = "",
        shared_key: str | None = None,
    ) -> Job:
        """Queue ``work``; a shared job with the same ``shared_key`` is reused unless it failed."""
        with self._lock:
            if shared_key is not None and shared_key in self._shared:
                known = self._jobs[self._shared[shared_key]]
                if known.state != "failed" and (known.state != "done" or known.available):
                    return known
            job_id = secrets.token_hex(8)
            job = Job(job_id, kind, cohort, owner, self.folder / job_id, label or cohort)
            job.folder.mkdir(parents=True, exist_ok=True)
            self._jobs[job_id] = job
            if shared_key is not None:
                self._shared[shared_key] = job_id
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Work) -> None:
        def progress(done: int, total: int) -> None:
            if self._closing.is_set():
                raise JobCancelledError("the server is stopping; start the export again")
            with self._lock:
                job.done, job.total = done, total

        with self._lock:
            job.state = "running"
        try:
            result = work(job, progress)
        except LakeError as exc:  # library messages name no original value
            with self._lock:
                job.state, job.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - reported by type only (a message could quote data)
            with self._lock:
                job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
        else:
            with self._lock:
                job.state, job.result = "done", result
                job.done = max(job.done, job.total)
                withdrawn = not job.available  # by an erasure while it ran
                if withdrawn:
                    job.state, job.result = "failed", None
                    job.error = ("an erasure (lake forget) withdrew instances of this export; "
                                 "start it again")
            if withdrawn:
                shutil.rmtree(job.folder, ignore_errors=True)
        with self._lock:
            job.finished_at = dt.datetime.now(dt.UTC)
        if self._on_finish is not None:
            self._on_finish(job)

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def shared(self, key: str) -> Job | None:
        """The shared job made under ``key``, or None."""
        with self._lock:
            job_id = self._shared.get(key)
            return self._jobs.get(job_id) if job_id else None

    def of(self, owner: str) -> list[Job]:
        """The jobs ``owner`` started, newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.owner == owner]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def close(self) -> None:
        """Stop taking jobs; running ones end at their next progress report."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _sweep(folder: Path, age: dt.timedelta = dt.timedelta(days=7)) -> None:
    """Remove run folders older than ``age`` (left by servers that did not stop cleanly)."""
    if not folder.is_dir():
        return
    cutoff = (dt.datetime.now(dt.UTC) - age).timestamp()
    for run in folder.glob("run-*"):
        try:
            if run.is_dir() and run.stat().st_mtime < cutoff:
                shutil.rmtree(run, ignore_errors=True)
        except OSError:
            continue
