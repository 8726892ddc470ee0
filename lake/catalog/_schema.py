"""The catalog's tables, defined in one place.

Every column of every table is declared here with its Arrow type and a one-line
meaning; ``docs/catalog.md`` is generated from these declarations
(``python tools/gen_catalog_docs.py``). Columns that carry a DICOM attribute are
named by its exact keyword; the lake's own columns are snake_case.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

# Declared with pyarrow's factory names but without importing pyarrow: `lake sql` needs only
# the DuckDB types (issue 14.1). Column.type and Table.schema give the pyarrow types.
from lake.catalog import _arrow_types as pa
from lake.nifti._parameters import PARAMETERS, Kind, Parameter

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "ACQUISITION_COLUMNS",
    "AUDIT",
    "BATCHES",
    "COHORTS",
    "DICOM_COLUMNS",
    "ERASURES",
    "INSTANCES",
    "PULLS",
    "QUARANTINE",
    "SHARES",
    "TABLES",
    "TEACHING_SETS",
    "TOKENS",
    "TOMBSTONES",
    "USERS",
    "Column",
    "Table",
]

_DOUBLES = pa.list_(pa.float64())
_STRINGS = pa.list_(pa.string())


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type, meaning."""

    name: str
    declared: pa.ArrowType
    doc: str
    sql_cast: str | None = None
    """DuckDB type the ``instances`` view casts to, where Delta lacks the type (TIME)."""

    @property
    def type(self) -> pyarrow.DataType:
        """The Arrow type (imports pyarrow)."""
        return self.declared.arrow()

    @property
    def duckdb_type(self) -> str:
        """The DuckDB type of the column as DuckDB's Parquet reader gives it (no pyarrow)."""
        return self.declared.duckdb()


@dataclass(frozen=True)
class Table:
    """One Delta table below ``<lake>/tables/<name>``."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    queryable: bool = True
    """Registered in the SQL catalog (``lake sql``, ``Lake.sql``, the portal's console).
    Tables of credentials (token and password hashes) are not: they are read only by the
    access code."""

    @functools.cached_property
    def schema(self) -> pyarrow.Schema:
        """The Arrow schema of the table's columns (built on first access, ~5 ms of CPU for
        ``instances``, then kept: callers ask for it once per column)."""
        import pyarrow

        return pyarrow.schema([pyarrow.field(c.name, c.type, nullable=True)
                               for c in self.columns])


def _c(name: str, type_: pa.ArrowType, doc: str) -> Column:
    return Column(name, type_, doc)


def _tm(name: str, doc: str) -> Column:
    # Delta has no TIME type: stored as ISO text (HH:MM:SS.ffffff), exposed as TIME.
    return Column(name, pa.string(), doc, sql_cast="TIME")


# DICOM attributes promoted to typed columns (after de-identification). The type follows
# the VR: DA -> date32, TM -> time64[us], DT -> timestamp[us, UTC], DS/FD/FL -> float64,
# IS/US/UL/SS/SL -> int64, multi-valued -> list, everything else -> string.
DICOM_COLUMNS: tuple[Column, ...] = (
    _c("PatientID", pa.string(), "Keyed pseudonym of the patient (stable across batches)."),
    _c("PatientSex", pa.string(), "M, F or O, where the profile retains patient characteristics."),
    _c("PatientAge", pa.string(), "Age string such as 045Y (over 89 becomes 090Y) where retained."),
    _c("PatientWeight", pa.float64(), "Weight in kg where retained."),
    _c("PatientSize", pa.float64(), "Height in m where retained."),
    _c("StudyInstanceUID", pa.string(), "Remapped study UID (2.25 form)."),
    _c("StudyDate", pa.date32(), "Study date (shifted per patient, or removed, per profile)."),
    _tm("StudyTime", "Study time."),
    _c("StudyDescription", pa.string(), "Study description (cleaned or removed per profile)."),
    _c("SeriesInstanceUID", pa.string(), "Remapped series UID (2.25 form)."),
    _c("SeriesNumber", pa.int64(), "Series number."),
    _c("SeriesDate", pa.date32(), "Series date."),
    _tm("SeriesTime", "Series time."),
    _c("SeriesDescription", pa.string(), "Series description (cleaned or removed per profile)."),
    _c("Modality", pa.string(), "Modality of the series (CT, MR, US, ...)."),
    _c("BodyPartExamined", pa.string(), "Body part examined."),
    _c("ProtocolName", pa.string(), "Protocol name (cleaned or removed per profile)."),
    _c("Manufacturer", pa.string(), "Equipment manufacturer."),
    _c("ManufacturerModelName", pa.string(), "Equipment model."),
    _c("MagneticFieldStrength", pa.float64(), "MR field strength in T."),
    _c("FrameOfReferenceUID", pa.string(), "Remapped frame of reference UID."),
    _c("SOPInstanceUID", pa.string(), "Remapped instance UID (2.25 form); unique per row."),
    _c("SOPClassUID", pa.string(), "SOP class (a well-known UID, never remapped)."),
    _c("InstanceNumber", pa.int64(), "Instance number."),
    _c("AcquisitionNumber", pa.int64(), "Acquisition number."),
    _c("AcquisitionDate", pa.date32(), "Acquisition date."),
    _tm("AcquisitionTime", "Acquisition time."),
    _c("ContentDate", pa.date32(), "Content date."),
    _tm("ContentTime", "Content time."),
    _c("AcquisitionDateTime", pa.timestamp("us", tz="UTC"), "Acquisition date-time."),
    _c("ImageType", _STRINGS, "Image type values."),
    _c("Rows", pa.int64(), "Rows per frame."),
    _c("Columns", pa.int64(), "Columns per frame."),
    _c("NumberOfFrames", pa.int64(), "Frames in the instance (1 when absent)."),
    _c("SamplesPerPixel", pa.int64(), "Samples per pixel."),
    _c("PhotometricInterpretation", pa.string(), "MONOCHROME2, RGB, YBR_FULL_422, ..."),
    _c("BitsAllocated", pa.int64(), "Bits allocated per sample."),
    _c("BitsStored", pa.int64(), "Bits stored per sample."),
    _c("PixelRepresentation", pa.int64(), "0 unsigned, 1 signed."),
    _c("PixelSpacing", _DOUBLES, "Row and column spacing in mm."),
    _c("SliceThickness", pa.float64(), "Slice thickness in mm."),
    _c("SpacingBetweenSlices", pa.float64(), "Spacing between slices in mm."),
    _c("SliceLocation", pa.float64(), "Slice location in mm."),
    _c("ImagePositionPatient", _DOUBLES, "x, y, z of the first voxel in mm (patient frame)."),
    _c("ImageOrientationPatient", _DOUBLES, "Row and column direction cosines."),
    _c("RescaleSlope", pa.float64(), "Rescale slope."),
    _c("RescaleIntercept", pa.float64(), "Rescale intercept."),
    _c("WindowCenter", _DOUBLES, "Window centre values."),
    _c("WindowWidth", _DOUBLES, "Window width values."),
    _c("EchoTime", pa.float64(), "Echo time in ms."),
    _c("RepetitionTime", pa.float64(), "Repetition time in ms."),
    _c("FlipAngle", pa.float64(), "Flip angle in degrees."),
    _c("KVP", pa.float64(), "Peak kilovoltage."),
    _c("ConvolutionKernel", _STRINGS, "Reconstruction kernel."),
    _c(
        "BurnedInAnnotation",
        pa.string(),
        "YES/NO after de-identification (NO after pixel cleaning).",
    ),
    _c("PatientIdentityRemoved", pa.string(), "YES for every instance in the lake."),
    _c(
        "DeidentificationMethod",
        _STRINGS,
        "What the de-identification did, as recorded in the header.",
    ),
    _c("LongitudinalTemporalInformationModified", pa.string(), "UNMODIFIED, MODIFIED or REMOVED."),
    _c("TransferSyntaxUID", pa.string(), "Transfer syntax the instance is stored in."),
)

_ARROW_OF_KIND = {
    Kind.FLOAT: pa.float64(),
    Kind.INT: pa.int64(),
    Kind.BOOL: pa.bool_(),
    Kind.ENUM: pa.string(),
    Kind.FLOAT_LIST: _DOUBLES,
    Kind.INT_LIST: pa.list_(pa.int64()),
    Kind.ENUM_LIST: _STRINGS,
}


def _acquisition_column(p: Parameter) -> Column:
    unit = f" [{p.unit}]" if p.unit else ""
    choices = f" One of: {', '.join(p.choices)}." if p.choices else ""
    sources = "; ".join(f"{vendor}: {where}" for vendor, where in p.sources.items())
    doc = f"{p.doc}{unit}.{choices} Derived before de-identification from {sources}."
    return Column(p.name, _ARROW_OF_KIND[p.kind], doc)


#: Acquisition parameters (lake.nifti.PARAMETERS), derived from the original header at
#: ingest: validated numbers, codes and lists of those, never free text.
ACQUISITION_COLUMNS: tuple[Column, ...] = tuple(_acquisition_column(p) for p in PARAMETERS)

# The lake's own columns on each instance row.
_LAKE_INSTANCE_COLUMNS: tuple[Column, ...] = (
    _c("pixel_hash", pa.string(), "sha256:<hex> of the stored PixelData value (null when none)."),
    _c("pixel_vr", pa.string(), "VR of the PixelData element (OB or OW), null when none."),
    _c("pixel_bytes", pa.int64(), "Length of the stored PixelData value in bytes."),
    _c("size_bytes", pa.int64(), "Size of the de-identified instance: header plus pixel data."),
    _c(
        "header_json",
        pa.string(),
        "The full de-identified header as DICOM JSON (PS3.18 F.2); "
        "PixelData as a BulkDataURI naming the blob, other bulk data inline.",
    ),
    _c(
        "header_dicom",
        pa.binary(),
        "The de-identified Part-10 instance without PixelData (exact bytes for reassembly).",
    ),
    _c(
        "header_sha256",
        pa.string(),
        "sha256 (hex) of header_dicom, so cohorts pin their members without reading the "
        "headers (null on rows written before it existed: computed from header_dicom then).",
    ),
    _c(
        "identity_sha256",
        pa.string(),
        "sha256 of header_json without its PixelData entry: the same instance in another "
        "transfer syntax has the same value (tells a re-sent instance from a different object "
        "that reuses its SOP Instance UID).",
    ),
    _c("profile", pa.string(), "Name of the de-identification profile applied."),
    _c("profile_version", pa.string(), "Version of that profile."),
    _c("profile_sha256", pa.string(), "Hash of every byte the profile was built from."),
    _c("pixels_cleaned", pa.bool_(), "Whether burned-in text was masked in the pixel data."),
    _c(
        "document_mime_type",
        pa.string(),
        "For a wrapped document: the MIME type of its content as 'lake export documents' "
        "writes it (application/pdf, image/jpeg, image/png, video/mp4); null otherwise.",
    ),
    _c("document_pages", pa.int64(), "Pages of a wrapped PDF or scan; null otherwise."),
    _c("document_duration", pa.float64(), "Seconds of a wrapped video; null otherwise."),
    _c(
        "accession_key",
        pa.string(),
        "HMAC (the lake's UID key) of the original AccessionNumber, as 2.25.<int>: finds the "
        "study of an accession for documents; never the accession itself.",
    ),
    _c(
        "identity_keys",
        _STRINGS,
        "HMACs of the study's identifying words that descriptor cleaning would keep (names "
        "that are ordinary words), for documents attached later; never the words.",
    ),
    _c("batch_id", pa.string(), "The ingest batch (one Delta commit) that added the row."),
    _c("ingested_at", pa.timestamp("us", tz="UTC"), "When the row was committed."),
)

INSTANCES = Table(
    "instances",
    "One row per de-identified DICOM instance.",
    DICOM_COLUMNS + _LAKE_INSTANCE_COLUMNS + ACQUISITION_COLUMNS,
)

BATCHES = Table(
    "batches",
    "One row per ingest batch (one commit of instance rows).",
    (
        _c("batch_id", pa.string(), "Batch identifier."),
        _c("source", pa.string(), "Where the batch came from: ingest, dicom-store, pull."),
        _c("started_at", pa.timestamp("us", tz="UTC"), "When the batch started."),
        _c("finished_at", pa.timestamp("us", tz="UTC"), "When the batch committed."),
        _c("profile", pa.string(), "Profile name."),
        _c("profile_version", pa.string(), "Profile version."),
        _c("profile_sha256", pa.string(), "Profile hash."),
        _c("files_seen", pa.int64(), "Files (or received instances) looked at."),
        _c("ingested", pa.int64(), "Instances added."),
        _c("duplicates", pa.int64(), "Instances already in the lake (or twice in the batch)."),
        _c("quarantined", pa.int64(), "Files quarantined."),
        _c("bytes_in", pa.int64(), "Bytes read."),
        _c("blobs_written", pa.int64(), "New pixel blobs written."),
        _c("actions", pa.map_(pa.string(), pa.int64()), "Count of each de-identification action."),
        _c("catalog_version", pa.int64(), "The instances table version this batch committed."),
        _c(
            "replaced",
            pa.int64(),
            "Instances whose rows this batch replaced ('lake ingest --replace': same object, "
            "another profile); their earlier rows stay in older versions.",
        ),
        _c(
            "erased",
            pa.int64(),
            "Instances dropped at commit because their patient, study or series was erased "
            "('lake forget' leaves a tombstone): never added, never quarantined.",
        ),
    ),
)

QUARANTINE = Table(
    "quarantine",
    "One row per distinct rejected file (by content), however often it is re-ingested; the "
    "original bytes are kept encrypted with a vault key.",
    (
        _c("quarantined_at", pa.timestamp("us", tz="UTC"), "When it was rejected."),
        _c("batch_id", pa.string(), "The batch that rejected it."),
        _c(
            "source_sha256",
            pa.string(),
            "sha256 of the original bytes (not reversible to content).",
        ),
        _c("size_bytes", pa.int64(), "Size of the original."),
        _c(
            "reason",
            pa.string(),
            "Reason code: not_dicom, empty, truncated, dicomdir, uid_conflict (a different object "
            "already holds its SOP Instance UID), ...",
        ),
        _c("message", pa.string(), "Explanation, free of any original value."),
        _c("object_key", pa.string(), "Path below the lake of the encrypted original."),
    ),
)

_MEMBER = pa.struct(
    [
        pa.field("SeriesInstanceUID", pa.string()),
        pa.field("SOPInstanceUID", pa.string()),
        pa.field("pixel_hash", pa.string()),
        pa.field("header_sha256", pa.string()),
    ]
)

COHORTS = Table(
    "cohorts",
    "One row per saved cohort: its query, the catalog version it ran on, its members.",
    (
        _c("name", pa.string(), "Cohort name (unique; letters, digits, '.', '_', '-')."),
        _c("description", pa.string(), "Free text given by the researcher (may be empty)."),
        _c("query", pa.string(), "The SQL that selected the cohort."),
        _c("catalog_version", pa.int64(), "The instances table version the query ran on."),
        _c("created_at", pa.timestamp("us", tz="UTC"), "When the cohort was saved."),
        _c("lake_version", pa.string(), "imaging-lake version that saved the cohort."),
        _c("series", pa.list_(pa.string()), "Member SeriesInstanceUIDs, sorted."),
        _c(
            "members",
            pa.list_(_MEMBER),
            "Member instances: series and SOP instance UID, pixel blob hash and the sha256 of "
            "the stored header (header_dicom), sorted by series then instance.",
        ),
        _c("series_count", pa.int64(), "Number of member series."),
        _c("instance_count", pa.int64(), "Number of member instances."),
        _c("pixel_bytes", pa.int64(), "Total stored pixel bytes of the members."),
        _c("profiles", pa.list_(pa.string()), "De-identification profiles of the members."),
        _c(
            "withdrawn",
            pa.int64(),
            "Members withdrawn by an erasure ('lake forget'); no longer exported.",
        ),
    ),
)


PULLS = Table(
    "pulls",
    "One row per remote instance retrieved by 'lake pull' (the resume ledger).",
    (
        _c(
            "remote_key",
            pa.string(),
            "HMAC-SHA256 (vault key 'net-pull') of the remote SOP Instance UID; never the UID.",
        ),
        _c("peer", pa.string(), "AE title of the PACS it was pulled from."),
        _c("outcome", pa.string(), "stored (in the catalog) or quarantined (refused)."),
        _c("batch_id", pa.string(), "The ingest batch that committed it."),
        _c("pulled_at", pa.timestamp("us", tz="UTC"), "When it was committed."),
    ),
)

TOKENS = Table(
    "tokens",
    "One row per access token of the web services (the token itself is never stored).",
    (
        _c("token_id", pa.string(), "Public identifier of the token (shown by 'lake token list')."),
        _c(
            "token_sha256",
            pa.string(),
            "sha256 (hex) of the whole token text; the token is shown once.",
        ),
        _c("role", pa.string(), "steward, researcher or student."),
        _c(
            "cohorts",
            pa.list_(pa.string()),
            "Cohorts the token is limited to (empty: the whole lake; for a student, every teaching set).",
        ),
        _c("note", pa.string(), "Free text to recognise the token by (who or what uses it)."),
        _c("created_at", pa.timestamp("us", tz="UTC"), "When the token was created."),
        _c("expires_at", pa.timestamp("us", tz="UTC"), "When it stops working (null: never)."),
        _c("revoked_at", pa.timestamp("us", tz="UTC"), "When it was revoked (null: not revoked)."),
    ),
    queryable=False,
)

TEACHING_SETS = Table(
    "teaching_sets",
    "Cohorts a steward has made teaching sets: the only cohorts student tokens can see.",
    (
        _c("cohort", pa.string(), "Name of the cohort (see the cohorts table)."),
        _c("catalog_version", pa.int64(), "The cohort's catalog version when it was marked."),
        _c("marked_at", pa.timestamp("us", tz="UTC"), "When it was made a teaching set."),
        _c("unmarked_at", pa.timestamp("us", tz="UTC"), "When it stopped being one (null: it is)."),
    ),
)

_VERSIONS = pa.struct(
    [
        pa.field("table", pa.string()),
        pa.field("first", pa.int64()),
        pa.field("last", pa.int64()),
    ]
)

ERASURES = Table(
    "erasures",
    "One row per erasure ('lake forget'): what kind, how many, when, by whom; no identifier "
    "of what was erased.",
    (
        _c("erasure_id", pa.string(), "Erasure identifier."),
        _c("erased_at", pa.timestamp("us", tz="UTC"), "When the erasure finished."),
        _c("erased_by", pa.string(), "The steward's account name (who ran 'lake forget')."),
        _c("kind", pa.string(), "What was selected: patient, study or series."),
        _c("instances", pa.int64(), "Instances erased."),
        _c("series", pa.int64(), "Series erased in full."),
        _c("studies", pa.int64(), "Studies erased in full."),
        _c("blobs", pa.int64(), "Pixel blobs deleted (those no other instance shares)."),
        _c("quarantined", pa.int64(), "Quarantined originals deleted."),
        _c("spooled", pa.int64(), "Spooled received instances deleted."),
        _c("cohorts", pa.int64(), "Saved cohorts whose members were withdrawn."),
        _c("files", pa.int64(), "Table data files removed from every version."),
        _c(
            "unreadable",
            pa.list_(_VERSIONS),
            "Version ranges (inclusive) per table that can no longer be read: their data "
            "files held erased rows ('--as-of' one of them names this erasure).",
        ),
        _c("catalog_version", pa.int64(), "The instances version after the erasure."),
    ),
)

TOMBSTONES = Table(
    "tombstones",
    "One row per erased patient, study or series ('lake forget'): every commit drops rows "
    "that match one. Keyed hashes only, never the pseudonym or UID itself.",
    (
        _c(
            "tombstone",
            pa.string(),
            "HMAC-SHA256 (a key derived from the lake's secret) of the column and the value "
            "as stored in the lake (PatientID, StudyInstanceUID or SeriesInstanceUID).",
        ),
        _c("kind", pa.string(), "What was erased: patient, study or series."),
        _c("erasure_id", pa.string(), "The erasure ('erasures' table) that laid it."),
        _c("laid_at", pa.timestamp("us", tz="UTC"), "When it was recorded."),
    ),
    queryable=False,
)

USERS = Table(
    "users",
    "One row per portal account ('lake users add'); the password is kept only as an Argon2 hash.",
    (
        _c("name", pa.string(), "Account name (lower-case letters, digits, '.', '_', '-')."),
        _c("role", pa.string(), "steward, researcher or student."),
        _c(
            "cohorts",
            pa.list_(pa.string()),
            "Cohorts the account is limited to (empty: the whole lake; for a student, every "
            "teaching set).",
        ),
        _c("password_hash", pa.string(), "Argon2id hash of the password (PHC string); never the password."),
        _c("created_at", pa.timestamp("us", tz="UTC"), "When the account was added."),
        _c(
            "password_changed_at",
            pa.timestamp("us", tz="UTC"),
            "When the password was last set; sessions signed in before it end.",
        ),
        _c("removed_at", pa.timestamp("us", tz="UTC"), "When it was removed (null: active)."),
    ),
    queryable=False,
)

SHARES = Table(
    "shares",
    "One row per share link ('lake share create'): a read-only token for one cohort, kept in "
    "the tokens table as a hash; revoking the token ends the link.",
    (
        _c("token_id", pa.string(), "The link's token id (see the tokens table)."),
        _c("cohort", pa.string(), "The cohort or teaching set it opens."),
        _c("role", pa.string(), "student or researcher: whose view of the cohort it gives."),
        _c("created_by", pa.string(), "Who made it (portal account or system account name)."),
        _c("created_at", pa.timestamp("us", tz="UTC"), "When it was made."),
    ),
    queryable=False,
)

AUDIT = Table(
    "audit",
    "Append-only audit log of the web portal and the access commands: every sign-in, "
    "download, export, share and token use. Resources are named by the lake's pseudonymous "
    "UIDs, cohort names or ids, never by an original value; an erasure ('lake forget') "
    "replaces the UIDs it withdraws by <erased>, in every version.",
    (
        _c("event_id", pa.string(), "Unique id of the event."),
        _c("at", pa.timestamp("us", tz="UTC"), "When it happened."),
        _c(
            "actor_kind",
            pa.string(),
            "How the actor was known: session (portal account), token, share (share link), "
            "system (a command run on the server), anonymous.",
        ),
        _c(
            "actor",
            pa.string(),
            "Account name, token id or share id (unknown: a failed sign-in by an unknown name).",
        ),
        _c("role", pa.string(), "The actor's role (null when unknown)."),
        _c(
            "action",
            pa.string(),
            "sign_in, sign_in_failed, sign_in_throttled, sign_out, download, export_started, "
            "export_finished, export_failed, cohort_created, share_created, share_revoked, "
            "token_created, token_revoked, token_use, share_use, user_added, user_removed, "
            "password_set, query_run.",
        ),
        _c(
            "resource_kind",
            pa.string(),
            "What the action was about: cohort, teaching_set, case, export, study, series, "
            "instance, share, token, user, route (null: nothing in particular).",
        ),
        _c("resource", pa.string(), "Cohort name, pseudonymous UID, job, token or account id."),
        _c("outcome", pa.string(), "ok, refused or failed."),
        _c("detail", pa.string(), "Fixed text: the route template and HTTP status, the export format..."),
    ),
)

TABLES: tuple[Table, ...] = (
    INSTANCES,
    BATCHES,
    QUARANTINE,
    COHORTS,
    PULLS,
    TOKENS,
    TEACHING_SETS,
    ERASURES,
    USERS,
    SHARES,
    AUDIT,
    TOMBSTONES,
)
