"""The value types of the NIfTI converter: volumes, refusals and their reason codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

__all__ = ["NiftiRefusal", "NiftiVolume", "RefusalReason"]


class RefusalReason(StrEnum):
    """Why (part of) a series was not converted. Values are stable, machine-readable codes."""

    NO_PIXEL_DATA = "no_pixel_data"
    """An instance has no (decodable) image pixels: a report, a waveform, a presentation state."""
    MIXED_SERIES = "mixed_series"
    """The instances belong to more than one SeriesInstanceUID."""
    MIXED_GEOMETRY = "mixed_geometry"
    """Slices of one stack differ in orientation, matrix or pixel size (localizers, reformats)."""
    MISSING_GEOMETRY = "missing_geometry"
    """Some instances have a position and orientation and others do not."""
    GANTRY_TILT = "gantry_tilt"
    """Slice origins shift within the plane from slice to slice; not resampled."""
    MISSING_SLICES = "missing_slices"
    """Slice locations are evenly spaced except for holes: instances are missing."""
    UNEVEN_SPACING = "uneven_spacing"
    """Slice locations are not evenly spaced and not a regular grid with holes."""
    INCOMPLETE_VOLUMES = "incomplete_volumes"
    """A 4D series has a different number of frames at different slice locations."""
    AMBIGUOUS_VOLUME_ORDER = "ambiguous_volume_order"
    """Frames of a 4D series cannot be assigned to volumes consistently."""
    MOSAIC_WITHOUT_LAYOUT = "mosaic_without_layout"
    """A mosaic's tile count, grid and positions are unknown (not derived at ingest)."""
    INCONSISTENT_MOSAIC = "inconsistent_mosaic"
    """The mosaics of one series differ in geometry or tile count."""
    UNSUPPORTED_PIXELS = "unsupported_pixels"
    """The pixel format has no faithful NIfTI form (palette colour, 16-bit RGB...)."""
    INVALID_GEOMETRY = "invalid_geometry"
    """Pixel spacing or orientation is zero or not finite: no valid affine exists."""
    DECODE_FAILED = "decode_failed"
    """The pixel data could not be decoded (missing codec, truncated or corrupt data)."""


@dataclass(frozen=True)
class NiftiRefusal:
    """A part of a series that was not converted, and why.

    Parameters
    ----------
    reason_code : RefusalReason
        Machine-readable reason.
    message : str
        Explanation for a person; holds counts and codes, never an original DICOM value.
    suffix : str
        Which part of the series (the file-name suffix it would have had, e.g. ``"_e2"``).
    """

    reason_code: RefusalReason
    message: str
    suffix: str = ""


@dataclass(frozen=True, eq=False)
class NiftiVolume:
    """One NIfTI file's worth of a converted series.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        The volume; its data object applies ``scl_slope``/``scl_inter`` when read.
    sidecar : dict
        BIDS sidecar keys (JSON-serialisable values), nothing identifying.
    suffix : str
        File-name suffix telling this volume apart from its siblings of the same series:
        ``""``, ``"_e2"`` (second echo), ``"_ph"`` (phase), ``"_e2_ph"``...
    bval : numpy.ndarray, optional
        ``(n,)`` b-values (s/mm²) of a diffusion series.
    bvec : numpy.ndarray, optional
        ``(3, n)`` gradient directions in FSL image space.
    """

    image: nib.Nifti1Image
    sidecar: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""
    bval: NDArray[np.float64] | None = None
    bvec: NDArray[np.float64] | None = None
