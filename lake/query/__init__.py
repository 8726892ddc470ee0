"""The DICOM query/retrieve information model over the catalog.

One implementation of DICOM matching (PS3.4 C.2.2.2) shared by every front door that
queries the lake: C-FIND/C-GET/C-MOVE (:mod:`lake.net`) and QIDO-RS/WADO-RS
(:mod:`lake.web`). A query identifier becomes :class:`Key` objects at a :class:`Level`;
a :class:`Snapshot` indexes one catalog version in DuckDB and answers them with
bound-parameter SQL; :class:`SnapshotCache` follows the newest version. :class:`InstanceLookup` fetches one
instance's whole row by SOPInstanceUID (a narrow DuckDB lookup, then one row group read).

Examples
--------
>>> from lake.query import Level, identifier_from_filters, parse_identifier
>>> ds = identifier_from_filters(["ModalitiesInStudy=CT", "StudyDate=20200101-"])
>>> level, keys = parse_identifier(ds, list(Level))
>>> level, [k.keyword for k in keys]
(<Level.STUDY: 'STUDY'>, ['StudyDate', 'ModalitiesInStudy'])
"""

from lake.query._index import RetrieveItem, Snapshot, SnapshotCache, StoredInstance
from lake.query._lookup import InstanceLookup, instance_row
from lake.query._match import (
    Key,
    Level,
    Predicate,
    identifier_from_filters,
    parse_date,
    parse_identifier,
    parse_time,
    predicate,
    python_matcher,
)

__all__ = [
    "InstanceLookup",
    "Key",
    "Level",
    "Predicate",
    "RetrieveItem",
    "Snapshot",
    "SnapshotCache",
    "StoredInstance",
    "identifier_from_filters",
    "instance_row",
    "parse_date",
    "parse_identifier",
    "parse_time",
    "predicate",
    "python_matcher",
]
