"""The durable way in for every front door: seal, de-identify, commit in batches.

``lake serve dicom`` (C-STORE), ``lake pull`` (C-GET/C-MOVE) and STOW-RS receive instances
one at a time, from peers that wait for an answer. :class:`Intake` gives each of them
the same promise, at the cost of one shared ``fdatasync``: when :meth:`Intake.submit`
returns, the instance as received is durable, sealed, in the front door's receipt
journal (:mod:`lake.net._journal`); it is then de-identified (on the calling thread or in
worker processes), queued, and committed with the others every ``every`` instances or
``interval`` seconds, one Delta commit per batch. A receipt lives until its outcome is
in the catalog; a crash leaves it for the next :meth:`Intake.start`, which re-makes and
commits the outcome (identically: UIDs and dates are keyed), through the worker
processes like any received instance. An instance whose de-identification ends its
worker process (a crash, out of memory) is tried again in a new worker, then quarantined
as ``deid_worker_crashed`` with its sealed original (:mod:`lake.net._workers`), so it
cannot bring down the server or make every start replay it. Because the original is at
hand until then, an instance that turns out to reuse the SOP Instance UID of a
different object is quarantined as ``uid_conflict`` *with* its sealed original, as
``lake ingest`` does.

On a lake in an object store there is no local journal: each instance is de-identified
first and its outcome (the row or the PHI-free quarantine record) written as one object
below ``spool/<name>/`` before :meth:`Intake.submit` returns; a UID conflict is recorded
without its original.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from lake._capture import Captured, capture
from lake._errors import NetError
from lake.ingest import BatchResult, Ingestor, Outcome, reject
from lake.net._journal import Receipt, ReceiptJournal
from lake.net._spool import Committer, OnCommitted, Spool, SpoolEntry
from lake.net._workers import DeidWorkers, WorkerCrashError
from lake.vault import Secret

__all__ = ["Intake"]

_LOG = logging.getLogger(__name__)
_RECEIPTS = "receipts"
_MAX_JOURNALS = 64  # concurrent processes of one non-exclusive front door, at most
_RECOVERING = 64  # leftovers in the workers at once while recovering (memory stays bounded)
CRASHED = "deid_worker_crashed"
"""Quarantine reason of an instance whose de-identification kept ending its worker process."""


class Intake:
    """Durable receipt, de-identification and batched commits for one front door.

    Parameters
    ----------
    ingestor : Ingestor
        De-identifies (its context, also in the worker processes) and commits.
    secret : Secret
        The lake's secret: the receipt journal's sealing key is derived from it.
    name : str
        The front door (``dicom-store``, ``pull``, ``stow``): its journal and spool live
        in ``<lake>/spool/<name>/``.
    every : int
        Commit once this many outcomes are waiting...
    interval : float
        ...or once the oldest has waited this many seconds (and none came in the last
        0.25 s)...
    busy_interval : float, optional
        ...or, while instances keep coming, once the oldest has waited this many seconds
        (default ``interval``): :class:`~lake.net._spool.Committer`.
    workers : int
        Processes de-identifying received instances (0: the thread that submits).
    exclusive : bool
        One process at a time for this front door (:meth:`start` raises if another holds
        it). Otherwise each process takes a journal of its own (``receipts``,
        ``receipts-2``, ...), and :meth:`start` also commits what crashed processes left in
        journals that no process holds.
    on_committed : callable, optional
        ``(entries, batch)`` after each commit (each entry's ``tag`` is the one given
        to :meth:`submit`; entries re-made from a crash's leftovers have none).
    captured : Captured, optional
        Counts what pydicom warns or logs while de-identifying.

    Examples
    --------
    >>> ingestor = Ingestor(lk, secret, source="stow")  # doctest: +SKIP
    >>> intake = Intake(ingestor, secret, "stow")  # doctest: +SKIP
    >>> recovered = intake.start()  # doctest: +SKIP
    >>> outcome = intake.store(part10_bytes)  # durable, de-identified, queued  # doctest: +SKIP
    >>> intake.flush()  # committed now (else within `interval`)  # doctest: +SKIP
    >>> intake.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        ingestor: Ingestor,
        secret: Secret,
        name: str,
        *,
        every: int = 500,
        interval: float = 2.0,
        busy_interval: float | None = None,
        workers: int = 0,
        exclusive: bool = False,
        on_committed: OnCommitted | None = None,
        captured: Captured | None = None,
    ) -> None:
        location = ingestor.lake.location
        self.ingestor = ingestor
        self.name = name
        self.exclusive = exclusive
        self.captured = captured or Captured()
        self.spool = Spool(location, name)
        self.committer = Committer(ingestor, self.spool, every=every, interval=interval,
                                   busy_interval=busy_interval, on_committed=self._committed)
        self.on_committed = on_committed
        self.journal: ReceiptJournal | None = None
        self.failures = 0
        """Instances whose de-identification failed (their receipts wait for the next start)."""
        self._secret = secret
        self._journaled = location.is_local  # asked for every instance received
        self._workers = DeidWorkers(ingestor.context, workers if location.is_local else 0,
                                    self.captured)
        self._inflight = 0
        self._settled = threading.Condition()
        self._started = False

    @property
    def journaled(self) -> bool:
        """Whether instances are durable as received (a local lake) before de-identifying."""
        return self._journaled

    @property
    def last_error(self) -> str | None:
        """The background commit's last failure (retried), if the latest attempt failed."""
        return self.committer.last_error

    @property
    def batches(self) -> list[BatchResult]:
        """Every batch committed so far."""
        return self.committer.batches

    # -- start and stop --------------------------------------------------------------
    def start(self) -> int:
        """Take the journal, commit whatever a crash left, start committing and workers.

        Returns
        -------
        int
            Instances recovered from an earlier run and committed now.

        Raises
        ------
        NetError
            If ``exclusive`` and another process holds the journal, or a worker cannot
            start.
        """
        if self._started:
            return 0
        recovered = sum(b.files_seen for b in self.committer.recover())  # spooled outcomes
        # the workers first: what a crash left is de-identified there too, never in this
        # process (an instance that crashes its worker would crash every start)
        self._workers.start()
        try:
            if self.journaled:
                recovered += self._take_journal()
        except BaseException:
            self._workers.close()
            if self.journal is not None:
                self.journal.close()
            raise
        self.committer.start()
        self._started = True
        return recovered

    def _take_journal(self) -> int:
        root = Path(self.spool.dir)
        recovered = 0
        for index in range(1, _MAX_JOURNALS + 1):
            folder = root / (_RECEIPTS if index == 1 else f"{_RECEIPTS}-{index}")
            if self.journal is not None and not folder.exists():
                break
            journal = ReceiptJournal(folder, self._secret)
            if self.exclusive:
                journal.lock()  # raises if held
            elif not journal.try_lock():
                continue  # another process's own
            if self.journal is None:
                self.journal = journal
                recovered += self._recover(journal, self.committer)
                if self.exclusive:
                    break
            else:  # a crashed process's: commit its leftovers, leave it free
                committer = Committer(self.ingestor, self.spool, every=self.committer.every,
                                      on_committed=partial(_drop_receipts, journal))
                recovered += self._recover(journal, committer)
                journal.close()
        if self.journal is None:
            raise NetError(
                f"{_MAX_JOURNALS} processes are receiving into {root} at once; stop some"
            )
        self.journal.start()
        return recovered

    def _recover(self, journal: ReceiptJournal, committer: Committer) -> int:
        """Re-make and commit the outcome of every receipt a previous run left.

        Through the worker processes like any received instance (crash counting and
        quarantine included); a leftover whose de-identification fails stays for the
        next start.
        """
        done = 0
        for receipt, data in journal.leftovers():
            with self._settled:
                while self._inflight >= _RECOVERING:
                    self._settled.wait()
            self._deidentify(journal, committer, receipt, data, None)
            del data
            done += 1
            if committer.pending >= committer.every:
                committer.flush()
        self.drain()
        committer.flush()
        return done

    def close(self) -> list[BatchResult]:
        """Wait for what was submitted, commit it, stop the workers and release the journal.

        Returns
        -------
        list of BatchResult
            The batches committed while closing.

        Raises
        ------
        NetError
            If the final commit fails (everything stays durable; the next start commits it).
        """
        self._workers.give_up_waiting()  # no wait for workers that keep failing to start
        self.drain()
        self._workers.close()
        return self._stop_committing()

    def _stop_committing(self) -> list[BatchResult]:
        try:
            return self.committer.stop()
        finally:
            if self.journal is not None:
                self.journal.close()
            self._started = False

    # -- receiving ---------------------------------------------------------------------
    def submit(self, data: bytes, tag: str | None = None) -> Future[Outcome]:
        """Make ``data`` (a Part-10 instance as received) durable; de-identify it after.

        When this returns the instance cannot be lost: acknowledge it. The future gives
        its outcome once de-identified and queued for commit; if de-identifying fails, the
        future raises and the receipt waits for the next :meth:`start`.

        Parameters
        ----------
        data : bytes
            The instance: file meta and data set, as received.
        tag : str, optional
            Handed back in ``on_committed`` (the pull ledger's key).

        Raises
        ------
        NetError
            If it cannot be made durable (disk full, permissions): do not acknowledge.
        """
        if self.journal is None:  # an object store: the outcome is what is made durable
            outcome = self._workers.submit(data).result()
            self.committer.submit(outcome, tag)
            done: Future[Outcome] = Future()
            done.set_result(outcome)
            return done
        receipt = self.journal.append(data)
        return self._deidentify(self.journal, self.committer, receipt, data, tag)

    def _deidentify(self, journal: ReceiptJournal, committer: Committer, receipt: Receipt,
                    data: bytes, tag: str | None) -> Future[Outcome]:
        with self._settled:
            self._inflight += 1
        result: Future[Outcome] = Future()
        if self._workers.running:  # worker processes capture their own warnings
            deidentified = self._workers.submit(data)
        else:
            with capture(into=self.captured):  # without worker processes, on this thread
                deidentified = self._workers.submit(data)
        deidentified.add_done_callback(
            partial(self._queue, journal, committer, receipt, tag, result))
        return result

    def store(self, data: bytes, tag: str | None = None) -> Outcome:
        """:meth:`submit` and wait for the outcome (durable, de-identified, queued).

        Raises
        ------
        NetError
            If it cannot be made durable, or de-identifying it failed (it is then
            re-made at the next start).
        """
        try:
            return self.submit(data, tag).result()
        except NetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the worker's failure, by type only
            raise NetError(f"de-identification failed ({type(exc).__name__})") from None

    def _queue(self, journal: ReceiptJournal, committer: Committer, receipt: Receipt,
               tag: str | None, result: Future[Outcome],
               deidentified: Future[Outcome]) -> None:
        try:
            try:
                outcome = deidentified.result()
            except WorkerCrashError as crash:
                outcome = self._quarantine_crashing(journal, receipt, crash)
            committer.add(outcome, tag, original=partial(journal.read, receipt),
                          receipt=receipt)
            result.set_result(outcome)
        except Exception as exc:  # noqa: BLE001 - the receipt stays journaled: next start retries
            self.failures += 1
            _LOG.error("de-identifying a received instance failed (%s); it stays in the "
                       "receive journal and is retried at the next start", type(exc).__name__)
            result.set_exception(exc)
        finally:
            with self._settled:
                self._inflight -= 1
                self._settled.notify_all()

    def _quarantine_crashing(self, journal: ReceiptJournal, receipt: Receipt,
                             crash: WorkerCrashError) -> Outcome:
        """The original sealed into quarantine, without parsing it here (module docstring)."""
        _LOG.error("a received instance ended its de-identification worker process %d "
                   "times; it is quarantined as %s", crash.crashes, CRASHED)
        return reject(self.ingestor.context, journal.read(receipt), CRASHED,
                      f"de-identifying it ended the de-identification worker process "
                      f"{crash.crashes} times (a crash or out of memory); the original is "
                      "sealed in quarantine")

    @property
    def queued(self) -> int:
        """Instances durable and not de-identified yet."""
        with self._settled:
            return self._inflight

    def drain(self) -> None:
        """Wait until every instance submitted so far is de-identified and queued."""
        with self._settled:
            while self._inflight:
                self._settled.wait()

    def flush(self) -> list[BatchResult]:
        """De-identify everything submitted so far and commit it now, in this thread.

        Raises
        ------
        LakeError
            If the commit fails (everything stays durable and pending; it is retried).
        """
        self.drain()
        return self.committer.flush()

    def _committed(self, entries: Sequence[SpoolEntry], batch: BatchResult) -> None:
        if self.on_committed is not None:
            self.on_committed(entries, batch)
        if self.journal is not None:
            _drop_receipts(self.journal, entries, batch)


def _drop_receipts(journal: ReceiptJournal, entries: Sequence[SpoolEntry],
                   batch: BatchResult) -> None:
    """A committer's ``on_committed``: the journal may drop the committed receipts."""
    journal.committed([e.receipt for e in entries if e.receipt is not None])
