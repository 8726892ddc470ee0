"""DICOM series to NIfTI-1 with BIDS sidecars, following dcm2niix's conventions.

A self-contained converter: series in (pydicom datasets of one series, any order),
volumes and sidecars out. It depends on nothing of the lake but its errors, so it works on
original files in a notebook as well as on the de-identified instances of a lake export
(:func:`lake.export.export_nifti` adapts it to cohorts).

Examples
--------
>>> from pydicom import dcmread
>>> from pydicom.data import get_testdata_file
>>> from lake.nifti import series_to_nifti
>>> volumes, refusals = series_to_nifti([dcmread(get_testdata_file("CT_small.dcm"))])
>>> volumes[0].image.shape, volumes[0].suffix, refusals
((128, 128, 1), '', [])
"""

from lake.nifti._convert import series_to_nifti
from lake.nifti._sidecar import FORBIDDEN_KEYS
from lake.nifti._types import NiftiRefusal, NiftiVolume, RefusalReason
from lake.nifti._write import gzip_members, nifti_payload, write_volume

__all__ = [
    "FORBIDDEN_KEYS",
    "NiftiRefusal",
    "NiftiVolume",
    "RefusalReason",
    "gzip_members",
    "nifti_payload",
    "series_to_nifti",
    "write_volume",
]
