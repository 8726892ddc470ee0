"""Slice geometry for NIfTI export: orientation, order along the normal, spacing checks, affines.

Conventions (those of dcm2niix, so that files from both tools line up voxel for voxel):

* DICOM patient coordinates are LPS; NIfTI world coordinates are RAS. ``LPS_TO_RAS`` flips
  the first two axes.
* NIfTI voxel axis *i* runs along the DICOM column index (``ImageOrientationPatient[0:3]``),
  axis *j* runs along the DICOM row index **reversed** (the last DICOM row is NIfTI ``j = 0``),
  axis *k* runs along the slice normal ``row_cosine x col_cosine`` in increasing position.
* Positions along the normal are ``dot(ImagePositionPatient, normal)``.

Everything here is pure numpy: no DICOM parsing, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LPS_TO_RAS",
    "Plane",
    "SpacingVerdict",
    "StackGeometry",
    "check_stack",
    "fsl_bvecs",
    "slice_affine_ras",
    "tile_affine_ras",
]

FloatArray = NDArray[np.float64]

LPS_TO_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Two orientations are the same plane when their cosines differ by less than this.
ORIENTATION_TOLERANCE = 1e-4
#: Slice positions closer than this (mm) are the same location (4D repeats).
SAME_POSITION_MM = 1e-3
#: A gap may differ from the median gap by this fraction (plus ``SPACING_ABS_MM``).
SPACING_REL_TOLERANCE = 0.01
SPACING_ABS_MM = 0.01
#: In-plane drift of the slice origin per mm along the normal that counts as a tilt.
TILT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Plane:
    """The in-plane geometry shared by every slice of a stack.

    Parameters
    ----------
    row_cosine : numpy.ndarray
        ``ImageOrientationPatient[0:3]``: direction of increasing column index (LPS).
    col_cosine : numpy.ndarray
        ``ImageOrientationPatient[3:6]``: direction of increasing row index (LPS).
    row_spacing : float
        ``PixelSpacing[0]``: mm between the centres of adjacent rows.
    col_spacing : float
        ``PixelSpacing[1]``: mm between the centres of adjacent columns.
    rows, cols : int
        Matrix size.
    """

    row_cosine: FloatArray
    col_cosine: FloatArray
    row_spacing: float
    col_spacing: float
    rows: int
    cols: int

    @property
    def normal(self) -> FloatArray:
        """Unit slice normal ``row_cosine x col_cosine`` (LPS)."""
        n = np.cross(self.row_cosine, self.col_cosine)
        norm = float(np.linalg.norm(n))
        return n / norm if norm > 0 else n

    def same_as(self, other: Plane) -> bool:
        """Whether ``other`` describes the same matrix, orientation and pixel size."""
        if (
            self.rows == other.rows
            and self.cols == other.cols
            and self.row_spacing == other.row_spacing
            and self.col_spacing == other.col_spacing
            # np.array_equal's values, compared as Python floats (its set-up costs more than
            # six numbers: a 3 us call per cosine per frame); NaN differs from itself either way
            and self.row_cosine.tolist() == other.row_cosine.tolist()
            and self.col_cosine.tolist() == other.col_cosine.tolist()
        ):
            return True
        return (
            self.rows == other.rows
            and self.cols == other.cols
            and _allclose(self.row_cosine, other.row_cosine, ORIENTATION_TOLERANCE)
            and _allclose(self.col_cosine, other.col_cosine, ORIENTATION_TOLERANCE)
            and abs(self.row_spacing - other.row_spacing) <= 1e-4 * max(1.0, self.row_spacing)
            and abs(self.col_spacing - other.col_spacing) <= 1e-4 * max(1.0, self.col_spacing)
        )

    def is_orthonormal(self) -> bool:
        """Whether the two cosines are unit vectors at a right angle."""
        r, c = self.row_cosine, self.col_cosine
        return (
            abs(float(np.linalg.norm(r)) - 1.0) < 1e-3
            and abs(float(np.linalg.norm(c)) - 1.0) < 1e-3
            and abs(float(np.dot(r, c))) < 1e-3
        )


def _allclose(a: FloatArray, b: FloatArray, atol: float) -> bool:
    """``np.allclose(a, b, atol=atol)`` for two vectors of the same length, in Python floats
    (numpy's set-up is ~20 us a call, once per cosine per frame where a series' orientations
    differ in their last digits): ``isclose`` is ``|x - y| <= atol + rtol |y|`` with ``y``
    finite, or ``x == y``, each operation in float64 as numpy does it."""
    if a.shape != b.shape or a.ndim != 1:
        return bool(np.allclose(a, b, atol=atol))
    rtol = 1e-05  # np.allclose's default
    return all(
        (abs(x - y) <= atol + rtol * abs(y) and math.isfinite(y)) or x == y
        for x, y in zip(a.tolist(), b.tolist(), strict=True)
    )


class SpacingVerdict(StrEnum):
    """What :func:`check_stack` concluded about the slice positions of one volume."""

    SINGLE = "single"
    EVEN = "even"
    MISSING_SLICES = "missing_slices"
    UNEVEN = "uneven"
    TILTED = "tilted"


@dataclass(frozen=True)
class StackGeometry:
    """Result of :func:`check_stack` for the distinct slice locations of one stack.

    Parameters
    ----------
    verdict : SpacingVerdict
        Whether the locations form an evenly spaced, untilted stack.
    spacing : float
        Mean distance between adjacent locations along the normal (mm); 0 for one slice.
    first_position : numpy.ndarray
        ``ImagePositionPatient`` of the lowest slice along the normal (LPS).
    detail : str
        A sentence for a refusal message (counts only, no coordinates).
    """

    verdict: SpacingVerdict
    spacing: float
    first_position: FloatArray
    detail: str = ""


def _median(values: FloatArray) -> float:
    """``float(np.median(values))`` of a non-empty 1-D float array, computed as numpy computes
    it (the same partition, the mean of the middle one or two, NaN when any value is NaN)
    without its NaN check's ``np.ma.isMaskedArray``, which imports ``numpy.ma``: ~5 ms of
    CPU of a small ``lake export nifti`` (issue 14.2).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(14)
    >>> cases = [np.round(rng.normal(size=n) * 3.3, d).astype(t) for n in range(1, 40)
    ...          for t in (np.float64, np.float32, np.float16) for d in (1, 9)]
    >>> cases += [np.array([-0.0]), np.array([0.0, -0.0]), np.array([-0.0, -0.0]),
    ...           np.array([2.0, np.nan, 1.0]), np.array([np.inf, 1.0]), np.array([-np.inf])]
    >>> [c for c in cases if str(_median(c)) != str(float(np.median(c)))]  # str: -0.0, nan
    []
    """
    size = values.shape[0]
    half = size // 2
    part = np.partition(values, [half - 1, half, -1] if size % 2 == 0 else [half, -1])
    middle = part[half - 1 : half + 1] if size % 2 == 0 else part[half : half + 1]
    median = np.mean(middle, axis=0)
    if np.isnan(part[-1]):  # NaNs are partitioned last; numpy's median is then that NaN
        median = part[-1]
    return float(median)


def check_stack(positions: FloatArray, normal: FloatArray) -> StackGeometry:
    """Check the distinct slice positions of one stack, sorted along ``normal``.

    Parameters
    ----------
    positions : numpy.ndarray
        ``(n, 3)`` ``ImagePositionPatient`` of each distinct location, sorted so that
        ``positions @ normal`` increases.
    normal : numpy.ndarray
        Unit slice normal.

    Returns
    -------
    StackGeometry
        The verdict: even (writable), a gantry tilt, missing slices or uneven spacing.

    Examples
    --------
    >>> import numpy as np
    >>> pos = np.array([[0, 0, 0], [0, 0, 2.0], [0, 0, 4.0]])
    >>> check_stack(pos, np.array([0, 0, 1.0])).verdict
    <SpacingVerdict.EVEN: 'even'>
    >>> check_stack(pos[[0, 2]], np.array([0, 0, 1.0])).spacing
    4.0
    """
    n = positions.shape[0]
    first = positions[0].astype(np.float64)
    if n == 1:
        return StackGeometry(SpacingVerdict.SINGLE, 0.0, first)
    along = positions @ normal
    gaps = np.diff(along)
    span = float(along[-1] - along[0])
    # Gantry tilt: the slice origins drift in-plane as they advance along the normal.
    drift = (positions[-1] - positions[0]) - span * normal
    if float(np.linalg.norm(drift)) > TILT_TOLERANCE * max(span, 1.0):
        return StackGeometry(
            SpacingVerdict.TILTED,
            span / (n - 1),
            first,
            "slice origins shift within the image plane from slice to slice "
            "(gantry tilt or sheared acquisition)",
        )
    median = _median(gaps)
    tolerance = SPACING_ABS_MM + SPACING_REL_TOLERANCE * median
    off = np.abs(gaps - median) > tolerance
    if not bool(off.any()):
        return StackGeometry(SpacingVerdict.EVEN, span / (n - 1), first)
    smallest = float(gaps.min())
    multiples = gaps / smallest if smallest > 0 else gaps
    is_gap = bool(
        np.all(np.abs(multiples - np.round(multiples)) * smallest <= tolerance)
        and np.any(np.round(multiples) >= 2)
    )
    if is_gap:
        missing = int(np.sum(np.round(multiples) - 1))
        return StackGeometry(
            SpacingVerdict.MISSING_SLICES,
            smallest,
            first,
            f"{missing} slice location(s) missing from a stack of {n + missing}",
        )
    return StackGeometry(
        SpacingVerdict.UNEVEN,
        median,
        first,
        f"{int(off.sum())} of {n - 1} slice gaps differ from the median gap by more than "
        f"{SPACING_REL_TOLERANCE:.0%}",
    )


def slice_affine_ras(plane: Plane, first_position: FloatArray, slice_step: float) -> FloatArray:
    """The RAS voxel-to-world affine of a stack in the dcm2niix voxel order.

    Parameters
    ----------
    plane : Plane
        Shared in-plane geometry.
    first_position : numpy.ndarray
        ``ImagePositionPatient`` of the first (lowest along the normal) slice, LPS.
    slice_step : float
        Distance between slices along the normal (mm); for a single slice pass the
        slice thickness.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` affine mapping ``(i, j, k, 1)`` to RAS millimetres.

    Examples
    --------
    >>> import numpy as np
    >>> p = Plane(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), 0.5, 0.5, 4, 4)
    >>> slice_affine_ras(p, np.zeros(3), 2.0)[:3, 3].tolist()
    [0.0, -1.5, 0.0]
    """
    lps = np.eye(4)
    lps[:3, 0] = plane.row_cosine * plane.col_spacing
    lps[:3, 1] = -plane.col_cosine * plane.row_spacing
    lps[:3, 2] = plane.normal * slice_step
    lps[:3, 3] = first_position + (plane.rows - 1) * plane.row_spacing * plane.col_cosine
    return LPS_TO_RAS @ lps


def tile_affine_ras(plane: Plane, first_position: FloatArray, step: FloatArray) -> FloatArray:
    """The RAS affine of slices placed at ``first_position + k * step`` (mosaic tiles).

    Parameters
    ----------
    plane : Plane
        In-plane geometry of one tile.
    first_position : numpy.ndarray
        ``ImagePositionPatient`` of the first tile (LPS).
    step : numpy.ndarray
        LPS displacement from one tile to the next (may point against the normal).

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` RAS affine in the dcm2niix voxel order (column, reversed row, tile).
    """
    lps = np.eye(4)
    lps[:3, 0] = plane.row_cosine * plane.col_spacing
    lps[:3, 1] = -plane.col_cosine * plane.row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first_position + (plane.rows - 1) * plane.row_spacing * plane.col_cosine
    return LPS_TO_RAS @ lps


def fsl_bvecs(affine: FloatArray, gradients_lps: FloatArray) -> FloatArray:
    """Diffusion gradient directions in FSL's image space.

    FSL expects each direction expressed along the voxel axes of the image it
    accompanies, with the first component negated when the affine's determinant is
    positive (FSL treats voxel space as radiological). Zero vectors stay zero.

    Parameters
    ----------
    affine : numpy.ndarray
        The image's RAS affine.
    gradients_lps : numpy.ndarray
        ``(n, 3)`` directions in DICOM patient coordinates (LPS).

    Returns
    -------
    numpy.ndarray
        ``(3, n)`` as written to a ``.bvec`` file (one row per axis).
    """
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    ras = gradients_lps * np.array([-1.0, -1.0, 1.0])
    vox = ras @ axes
    if float(np.linalg.det(affine[:3, :3])) > 0:
        vox[:, 0] = -vox[:, 0]
    lengths = np.linalg.norm(vox, axis=1)
    nonzero = lengths > 1e-6
    vox[nonzero] = vox[nonzero] / lengths[nonzero, None]
    vox[~nonzero] = 0.0
    vox[np.abs(vox) < 1e-7] = 0.0
    return np.ascontiguousarray(vox.T)
