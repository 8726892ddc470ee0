"""DICOM series to NIfTI-1 with BIDS sidecars, following dcm2niix's conventions.

A self-contained converter: series in (pydicom datasets of one series, any order),
volumes and sidecars out. It depends on nothing of the lake but its errors, so it works on
original files in a notebook as well as on the de-identified instances of a lake export
(:func:`lake.export.export_nifti` adapts it to cohorts).

Vendors keep much of what a faithful conversion needs (mosaic layout, slice timing,
phase-encoding polarity, readout time, diffusion gradients, scaling) in private elements
that de-identification removes. :func:`derive_acquisition` reads them from the original
header as validated numbers and codes (:data:`PARAMETERS`), the lake stores them per
instance at ingest (one catalog column per parameter, :data:`ACQUISITION_NAMES`), and
:func:`series_to_nifti` takes them back at export (:func:`acquisition_from_row` reads them
from a catalog row).

The names are imported lazily: the parameter declarations are light, the converter is not.

Examples
--------
>>> from pydicom import dcmread
>>> from pydicom.data import get_testdata_file
>>> from lake.nifti import series_to_nifti
>>> volumes, refusals = series_to_nifti([dcmread(get_testdata_file("CT_small.dcm"))])
>>> volumes[0].image.shape, volumes[0].suffix, refusals
((128, 128, 1), '', [])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lake.nifti._convert import series_to_nifti
    from lake.nifti._decode import PixelDecodeError, decode_past_panic, is_native_panic
    from lake.nifti._derive import derive_acquisition
    from lake.nifti._parameters import (
        ACQUISITION_NAMES,
        PARAMETERS,
        AcquisitionValue,
        Kind,
        Parameter,
        acquisition_from_row,
    )
    from lake.nifti._parameters import validate_all as validate_acquisition
    from lake.nifti._part10 import Part10, ValueCache, read_part10
    from lake.nifti._sidecar import FORBIDDEN_KEYS
    from lake.nifti._types import NiftiRefusal, NiftiVolume, RefusalReason
    from lake.nifti._write import gzip_members, nifti_payload, write_volume

__all__ = [
    "ACQUISITION_NAMES",
    "FORBIDDEN_KEYS",
    "PARAMETERS",
    "AcquisitionValue",
    "Kind",
    "NiftiRefusal",
    "NiftiVolume",
    "Parameter",
    "Part10",
    "PixelDecodeError",
    "RefusalReason",
    "ValueCache",
    "acquisition_from_row",
    "decode_past_panic",
    "derive_acquisition",
    "gzip_members",
    "is_native_panic",
    "nifti_payload",
    "read_part10",
    "series_to_nifti",
    "validate_acquisition",
    "write_volume",
]

_HOMES = {
    "ACQUISITION_NAMES": "_parameters",
    "acquisition_from_row": "_parameters",
    "FORBIDDEN_KEYS": "_sidecar",
    "PARAMETERS": "_parameters",
    "AcquisitionValue": "_parameters",
    "Kind": "_parameters",
    "Parameter": "_parameters",
    "Part10": "_part10",
    "read_part10": "_part10",
    "ValueCache": "_part10",
    "NiftiRefusal": "_types",
    "NiftiVolume": "_types",
    "RefusalReason": "_types",
    "derive_acquisition": "_derive",
    "decode_past_panic": "_decode",
    "is_native_panic": "_decode",
    "PixelDecodeError": "_decode",
    "gzip_members": "_write",
    "nifti_payload": "_write",
    "series_to_nifti": "_convert",
    "write_volume": "_write",
    "validate_acquisition": "_parameters",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lake.nifti' has no attribute {name!r}")
    attribute = "validate_all" if name == "validate_acquisition" else name
    value = getattr(importlib.import_module(f"lake.nifti.{home}"), attribute)
    globals()[name] = value  # later lookups are plain attributes, as after an import
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
