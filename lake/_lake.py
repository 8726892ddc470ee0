"""The :class:`Lake`: one root holding blobs, Delta tables, quarantine and config."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from lake._config import LakeConfig
from lake._errors import (
    BlobNotFoundError,
    ConfigError,
    IntegrityError,
    LakeNotFoundError,
    StaleCatalogError,
    VaultError,
)
from lake.store import BlobStore, Location, resolve
from lake.vault import Secret, Vault

if TYPE_CHECKING:  # imported when first used: `import lake` stays light (issue 14.1)
    import duckdb

    from lake.catalog import Catalog, DeltaTables

__all__ = ["Lake", "LakeInfo", "VerifyReport", "init", "open_lake"]

_ENV_ROOT = "LAKE_ROOT"
_T = TypeVar("_T")

KEPT_CATALOGS = 4
"""How many catalogs of ``as_of`` versions an open lake keeps for its queries, besides the
current one (``as_of=None``); the least recently used beyond them is let go (not closed)."""


def _root_from(root: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    if root is not None:
        return root
    env = os.environ.get(_ENV_ROOT)
    if not env:
        raise LakeNotFoundError("no lake given: pass root=ROOT or set LAKE_ROOT (a path or URL)",
                                parameters=("root",))
    return env


@dataclass
class LakeInfo:
    """Counts and sizes of a lake."""

    version: int
    instances: int
    series: int
    studies: int
    patients: int
    blobs: int
    pixel_bytes_referenced: int
    pixel_bytes_stored: int
    quarantined: int
    batches: int

    @property
    def dedup_ratio(self) -> float:
        """Referenced pixel bytes over stored pixel bytes (1.0 = no sharing)."""
        if not self.pixel_bytes_stored:
            return 1.0
        return self.pixel_bytes_referenced / self.pixel_bytes_stored


@dataclass
class VerifyReport:
    """Problems found by :meth:`Lake.verify` (empty lists: all good)."""

    blobs_checked: int = 0
    rows_checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    duplicate_instances: list[str] = field(default_factory=list)
    missing_batches: list[str] = field(default_factory=list)
    completed_batches: list[str] = field(default_factory=list)
    mixed_series: list[str] = field(default_factory=list)
    """SeriesInstanceUIDs whose instances name several patients (reported, not a problem
    of the lake: the sender's data is so)."""

    @property
    def ok(self) -> bool:
        return not (
            self.corrupt or self.missing or self.duplicate_instances or self.missing_batches
        )


class Lake:
    """An imaging lake.

    Open one with :func:`lake.open`; create one with :func:`lake.init`.

    Its SQL (:meth:`sql`, :meth:`catalog`) may be called from several
    threads at once (a thread pool, a web server): each version's catalog is one DuckDB
    database, and each thread queries it on a connection of its own, made on its first query
    (:meth:`lake.catalog.Catalog.connection`), under the same lockdown. A relation is
    fetched on the thread that got it: DuckDB refuses a call on a connection busy with
    another ("connection is busy"), so a relation handed to another thread is fetched there
    only while its own thread is not querying. :meth:`refresh` (called by :meth:`ingest` and
    by the steward's erasure, release and purge) closes every catalog, so that nothing
    erased stays readable through a catalog held before: a query or relation in flight on
    another thread at that moment fails; let such threads finish first. SQL cannot change
    that database: a ``CREATE`` that is not ``TEMP``, a ``DROP``, ``ALTER``, ``INSERT``...
    that would is refused (``CREATE TEMP VIEW``/``TABLE`` define what the calling thread
    alone sees).

    Examples
    --------
    >>> import lake  # doctest: +SKIP
    >>> lk = lake.open("/data/lake")  # doctest: +SKIP
    >>> lk.sql("SELECT Modality, count(*) FROM instances GROUP BY 1").df()  # doctest: +SKIP
    """

    def __init__(self, location: Location, config: LakeConfig) -> None:
        self.location = location
        self.config = config
        self.blobs = BlobStore(location)
        self._catalogs: OrderedDict[int | None, Catalog] = OrderedDict()
        self._catalogs_lock = threading.Lock()

    @cached_property
    def tables(self) -> DeltaTables:
        """The catalog's Delta tables."""
        from lake.catalog import DeltaTables

        return DeltaTables(self.location)

    @property
    def root(self) -> str:
        return self.location.url

    def secret(self, vault: str | os.PathLike[str] | None = None) -> Secret:
        """This lake's secret from ``vault`` (or ``LAKE_VAULT``)."""
        return Vault.from_option(vault).load(self.config.lake_id, self.config.key_fingerprint)

    def catalog(self, as_of: int | None = None) -> Catalog:
        """A DuckDB catalog over the current (or ``as_of``) version; reused per version.

        The current catalog (``as_of=None``: the version first seen, until :meth:`refresh`)
        and the :data:`KEPT_CATALOGS` versions used most recently are kept; one used less
        recently is let go, not closed: relations it handed out stay fetchable, and its
        database is freed with the last of them. So a long-lived lake asked for many
        versions (a server, a notebook) holds a bounded number.
        """
        from lake.catalog import Catalog

        with self._catalogs_lock:
            catalog = self._catalogs.get(as_of)
            if catalog is not None:
                self._catalogs.move_to_end(as_of)
                return catalog
        made = Catalog(self.tables, as_of)  # (not under the lock: tens of milliseconds)
        with self._catalogs_lock:
            catalog = self._catalogs.setdefault(as_of, made)
            self._catalogs.move_to_end(as_of)
            pinned = [v for v in self._catalogs if v is not None]
            for version in pinned[: max(0, len(pinned) - KEPT_CATALOGS)]:
                del self._catalogs[version]
        if catalog is not made:
            made.close()  # another thread made this version's meanwhile; nobody has this one
        return catalog

    def _let_go(self, as_of: int | None, catalog: Catalog) -> bool:
        """Stop reusing ``catalog`` for ``as_of``; False when it was not the one kept."""
        with self._catalogs_lock:
            if self._catalogs.get(as_of) is not catalog:
                return False
            del self._catalogs[as_of]
            return True

    def refresh(self) -> None:
        """Forget open catalogs so the next query sees the newest version."""
        with self._catalogs_lock:
            catalogs = list(self._catalogs.values())
            self._catalogs.clear()
        for catalog in catalogs:
            catalog.close()

    def sql(self, query: str, as_of: int | None = None) -> duckdb.DuckDBPyRelation:
        """Run SQL over ``instances``, ``series``, ``studies``, ``patients``, ``batches``,
        ``quarantine``, ``cohorts``, ``pulls``.

        The query runs on a locked-down DuckDB connection: it cannot read or write files
        (the vault included), attach databases or load extensions
        (:func:`lake.catalog.locked_connection`). Write results with pandas/Arrow instead.

        Parameters
        ----------
        query : str
            DuckDB SQL.
        as_of : int, optional
            The ``instances`` table version to query (see ``lake info``).

        Returns
        -------
        duckdb.DuckDBPyRelation
            Use ``.df()``, ``.arrow()``, ``.pl()`` or ``.fetchall()``, on this thread.

        Raises
        ------
        QueryError
            If the query is malformed or tries to reach outside the catalog.
        """
        return self._on_catalog(as_of, lambda catalog: catalog.sql(query))

    def _execute(self, query: str, as_of: int | None = None
                 ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Run SQL as :meth:`sql` does, at once: returns its result's ``(description,
        rows)``, fetched (see :meth:`lake.catalog.Catalog._execute`).

        Raises
        ------
        QueryError
            If the query is malformed, fails, or tries to reach outside the catalog.
        """
        return self._on_catalog(as_of, lambda catalog: catalog._execute(query))

    def _on_catalog(self, as_of: int | None, run: Callable[[Catalog], _T]) -> _T:
        catalog = self.catalog(as_of)
        try:
            return run(catalog)
        except StaleCatalogError:
            # Another process erased, compacted or vacuumed the data files this kept catalog
            # reads: a catalog made now reads what is there (or says the version was erased).
            if not self._let_go(as_of, catalog):
                raise
            return run(self.catalog(as_of))

    @property
    def version(self) -> int:
        """The current version of the ``instances`` table."""
        return int(self.tables.open("instances").version())

    def ingest(
        self,
        sources: Iterable[str],
        *,
        vault: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        scheduler: str = "auto",
        workers: int | None = None,
        batch_size: int = 1000,
        on_progress: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> Any:
        """Ingest files, folders and zips; see :func:`lake.ingest.ingest` (``options``: study,
        limits, strict, follow_symlinks)."""
        from lake.ingest import ingest

        summary = ingest(
            self,
            sources,
            self.secret(vault),
            profile=profile,
            scheduler=scheduler,
            workers=workers,
            batch_size=batch_size,
            on_progress=on_progress,
            **options,
        )
        self.refresh()
        return summary

    # Cohorts and exports: thin delegations to lake.export, for notebooks.

    def create_cohort(self, name: str, sql: str, **kwargs: Any) -> Any:
        """Save cohort ``name`` from ``sql`` (see :func:`lake.export.create_cohort`)."""
        from lake.export import create_cohort

        return create_cohort(self, name, sql, **kwargs)

    def cohort(self, name: str) -> Any:
        """The saved cohort ``name`` (see :func:`lake.export.load_cohort`)."""
        from lake.export import load_cohort

        return load_cohort(self, name)

    def cohorts(self) -> Any:
        """Every saved cohort (see :func:`lake.export.list_cohorts`)."""
        from lake.export import list_cohorts

        return list_cohorts(self)

    def export_nifti(self, cohort_or_sql: Any, out: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Export to NIfTI + JSON sidecars (see :func:`lake.export.export_nifti`)."""
        from lake.export import export_nifti

        return export_nifti(self, cohort_or_sql, out, **kwargs)

    def export_bids(self, cohort_or_sql: Any, out: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Export a BIDS dataset (see :func:`lake.export.export_bids`)."""
        from lake.export import export_bids

        return export_bids(self, cohort_or_sql, out, **kwargs)

    def export_dicom(self, cohort_or_sql: Any, out: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Export de-identified DICOM (see :func:`lake.export.export_dicom`)."""
        from lake.export import export_dicom

        return export_dicom(self, cohort_or_sql, out, **kwargs)

    def export_teaching(
        self, cohort_or_sql: Any, out: str | os.PathLike[str], **kwargs: Any
    ) -> Any:
        """Export a teaching-set zip (see :func:`lake.export.export_teaching`)."""
        from lake.export import export_teaching

        return export_teaching(self, cohort_or_sql, out, **kwargs)

    def info(self) -> LakeInfo:
        """Counts, sizes, dedup ratio and the current version."""
        from lake.catalog import Catalog

        catalog = Catalog(self.tables)
        try:
            row = catalog.sql(
                "SELECT count(*), count(DISTINCT SeriesInstanceUID), count(DISTINCT StudyInstanceUID),"
                " count(DISTINCT PatientID), coalesce(sum(pixel_bytes), 0) FROM instances"
            ).fetchall()[0]
            quarantined = catalog.sql("SELECT count(*) FROM quarantine").fetchall()[0]
            batches = catalog.sql("SELECT count(*) FROM batches").fetchall()[0]
            distinct = catalog.sql(
                "SELECT DISTINCT pixel_hash FROM instances WHERE pixel_hash IS NOT NULL"
            ).fetchall()
        finally:
            catalog.close()
        stored = sum(self.blobs.size(h) for (h,) in distinct if self.blobs.exists(h))
        return LakeInfo(
            version=catalog.version,
            instances=int(row[0]),
            series=int(row[1]),
            studies=int(row[2]),
            patients=int(row[3]),
            blobs=len(distinct),
            pixel_bytes_referenced=int(row[4]),
            pixel_bytes_stored=stored,
            quarantined=int(quarantined[0]),
            batches=int(batches[0]),
        )

    def verify(self, on_progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-hash every blob, check every row's blob and batch exist.

        First completes the records of batches whose writer was interrupted after its
        instances commit (from the journal in that commit; see
        :func:`lake.catalog.complete_batches`).

        Returns
        -------
        VerifyReport
            ``corrupt`` blobs (content does not match the key), ``missing`` blobs
            (referenced by rows, absent), ``duplicate_instances`` (a SOPInstanceUID in
            more than one row), ``missing_batches`` (a batch_id of an instance or
            quarantine row with no row in ``batches``), ``completed_batches`` (batch
            records completed from their journal now), ``orphans`` (stored, referenced
            by no row: left by an interrupted ingest; harmless).
        """
        from lake.catalog import complete_batches

        report = VerifyReport()
        report.completed_batches = complete_batches(self.tables)
        columns = self.tables.dataset("instances").to_table(
            columns=["pixel_hash", "SOPInstanceUID", "batch_id", "SeriesInstanceUID", "PatientID"]
        )
        patients: dict[str, set[str]] = {}
        for series, patient in zip(
            columns.column("SeriesInstanceUID").to_pylist(),
            columns.column("PatientID").to_pylist(),
            strict=True,
        ):
            patients.setdefault(str(series), set()).add(str(patient))
        report.mixed_series = sorted(s for s, ids in patients.items() if len(ids) > 1)
        batches = set(
            self.tables.dataset("batches").to_table(columns=["batch_id"])["batch_id"].to_pylist()
        )
        quarantined = self.tables.dataset("quarantine").to_table(columns=["batch_id"])["batch_id"]
        referenced_batches = set(columns.column("batch_id").to_pylist()) | set(
            quarantined.to_pylist()
        )
        report.missing_batches = sorted(b for b in referenced_batches - batches if b is not None)
        referenced = [h for h in columns.column("pixel_hash").to_pylist() if h is not None]
        seen: set[str] = set()
        for uid in columns.column("SOPInstanceUID").to_pylist():
            if uid in seen:
                report.duplicate_instances.append(uid)
            seen.add(uid)
        report.rows_checked = len(referenced)
        wanted = set(referenced)
        present: set[str] = set()
        for key in self.blobs.keys():  # noqa: SIM118 - BlobStore.keys walks the store
            present.add(key)
            try:
                self.blobs.check(key)
            except IntegrityError:
                report.corrupt.append(key)
            except BlobNotFoundError:
                report.missing.append(key)
            report.blobs_checked += 1
            if on_progress is not None:
                on_progress(1)
        report.missing.extend(sorted(wanted - present))
        report.orphans.extend(sorted(present - wanted))
        return report


#: Characters of a local path that deltalake cannot hold: it reads the path as a URL, so '%'
#: starts an escape, '\\' separates folders, and '[', ']', '^', '|' make it panic.
_NOT_IN_DELTA_PATHS = "%[]^|\\"


def _usable(location: Location) -> Location:
    """``location``, unless deltalake cannot hold a table below it (ConfigError)."""
    if location.is_local:
        held = sorted({c for c in location.path if c in _NOT_IN_DELTA_PATHS})
        if held:
            shown = " ".join(repr(c) for c in held)
            raise ConfigError(
                f"root {location.path!r} holds {shown}, which deltalake cannot hold in a "
                "table's path, so the catalog cannot live there; choose a folder without "
                f"any of {' '.join(repr(c) for c in _NOT_IN_DELTA_PATHS)}"
            )
    return location


def init(
    root: str | os.PathLike[str] | None = None,
    *,
    vault: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Lake:
    """Create a lake at ``root`` (idempotent) and its key in ``vault``.

    Parameters
    ----------
    root : str or PathLike, optional
        Local path or fsspec URL; ``LAKE_ROOT`` when omitted.
    vault : str or PathLike, optional
        Key vault folder outside the lake; ``LAKE_VAULT`` when omitted.
    storage_options : dict, optional
        fsspec/deltalake options for remote roots (endpoint, credentials).

    Returns
    -------
    Lake
    """
    location = _usable(resolve(_root_from(root), storage_options))
    the_vault = Vault.from_option(vault)
    if (
        location.is_local
        and os.path.commonpath([str(the_vault.path), location.path]) == location.path
    ):
        raise VaultError(
            "the vault must be outside the lake; choose a folder not below the lake root"
        )
    try:
        config = LakeConfig.read(location)
        the_vault.load(config.lake_id, config.key_fingerprint)
    except LakeNotFoundError:
        lake_id = LakeConfig.new_id()
        secret = the_vault.create(lake_id)
        config = LakeConfig.new(secret.fingerprint, lake_id)
        location.fs.makedirs(location.path, exist_ok=True)
        lake = Lake(location, config)
        lake.tables.create_all()
        config.write(location)
        return lake
    lake = Lake(location, config)
    lake.tables.create_all()
    return lake


def open_lake(
    root: str | os.PathLike[str] | None = None, storage_options: dict[str, Any] | None = None
) -> Lake:
    """Open the lake at ``root`` (or ``LAKE_ROOT``).

    Raises
    ------
    LakeNotFoundError
        If no lake is there.
    """
    location = _usable(resolve(_root_from(root), storage_options))
    return Lake(location, LakeConfig.read(location))
