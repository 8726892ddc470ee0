"""Diffusion encoding of an assembled series: FSL bval/bvec as dcm2niix writes them.

The decisions follow dcm2niix's ``nii_saveDTI``: no files unless b-values or directions vary;
derived volumes (a trace or ADC image: b > 0 with a zero gradient) are left out of Philips
series, and of GE series that report no diffusion directions (otherwise GE's such volumes
are b = 0); a series that is all such volumes is isotropic (bval only). Gradients in the
patient frame are projected onto the image's voxel axes (FSL convention); GE reports them
along its logical (phase, frequency, slice) axes, mapped here onto the patient frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lake.nifti._geometry import Plane, fsl_bvecs
from lake.nifti._volume import Frame

__all__ = ["DiffusionTable", "diffusion_table"]

Acquisition = Mapping[str, Any]
FloatArray = NDArray[np.float64]
_ZERO = 1e-6


@dataclass(frozen=True)
class DiffusionTable:
    """Which volumes to keep and their FSL encoding.

    Attributes
    ----------
    keep : list of int
        Indices of the volumes written (derived trace/ADC volumes left out).
    bval : numpy.ndarray
        b-values of the kept volumes.
    bvec : numpy.ndarray or None
        ``(3, n)`` FSL directions; None for an isotropic (trace-only) series.
    """

    keep: list[int]
    bval: FloatArray
    bvec: FloatArray | None


def _ge_to_patient(vector: FloatArray, plane: Plane, phase_axis: str) -> FloatArray:
    """GE's (0019,10BB-BD) direction in the patient frame (LPS).

    dcm2niix's geCorrectBvecs (after dicm2nii): swap the first two components for row phase
    encoding, negate components by slice orientation (sagittal x and y, coronal y and z,
    axial z), negate y for the flipped rows, negate all; the result is along the image's
    row direction, reversed column direction and slice normal. Expressed in the patient
    frame it does not depend on the slice order.
    """
    x, y, z = (float(v) for v in vector)
    if phase_axis == "ROW":
        x, y = y, -x
    dominant = int(np.argmax(np.abs(plane.normal)))  # 0 sagittal, 1 coronal, 2 axial
    flips = {0: (True, True, False), 1: (False, True, True), 2: (False, False, True)}[dominant]
    signs = [-1.0 if f else 1.0 for f in flips]
    signs[1] = -signs[1]
    i, j, k = (-signs[0] * x, -signs[1] * y, -signs[2] * z)
    return np.asarray(i * plane.row_cosine - j * plane.col_cosine + k * plane.normal,
                      dtype=np.float64)


def _image_to_patient(vector: FloatArray, plane: Plane, affine: FloatArray) -> FloatArray:
    """A direction along the image's row, column and slice (k) axes, in the patient frame."""
    k_ras = np.asarray(affine, dtype=np.float64)[:3, 2]
    k_lps = k_ras * np.array([-1.0, -1.0, 1.0])
    k_lps = k_lps / float(np.linalg.norm(k_lps))
    x, y, z = (float(v) for v in vector)
    return np.asarray(x * plane.row_cosine + y * plane.col_cosine + z * k_lps, dtype=np.float64)


def _ge_length_scaled(b: FloatArray, g: FloatArray) -> None:
    """GE scales b by the squared gradient length (dcm2niix issue 163): undo it, in place.

    The b-value becomes ``b x |g|^2`` rounded to 5 (at least 5), the vector is scaled to
    match, as dcm2niix does for lengths between 0.03 and 0.97.
    """
    for i in range(len(b)):
        length = float(np.linalg.norm(g[i]))
        if b[i] <= _ZERO or not 0.03 < length < 0.97:
            continue
        scaled = b[i] * length * length
        new_b = 5.0 if 0 < scaled < 5 else float(int((scaled + 2.5) / 5) * 5)
        factor = 0.0 if new_b == 0 else float(np.sqrt(b[i] / new_b))
        b[i] = new_b
        g[i] = g[i] * factor


def diffusion_table(
    volumes: Sequence[Sequence[Frame]],
    acquisitions: Sequence[Acquisition],
    vendor: str | None,
    affine: FloatArray,
    plane: Plane | None,
    phase_axis: str,
    instances: int,
) -> DiffusionTable | None:
    """The bval/bvec of a series whose volumes are ``volumes`` (first frame of each used)."""
    firsts = [v[0] for v in volumes]
    if all(f.bvalue is None for f in firsts):
        return None
    n = len(firsts)
    if n < 3 and instances < 3:
        return None
    acquisition = acquisitions[firsts[0].source]
    frame = acquisition.get("diffusion_gradient_frame", "patient")
    b = np.array([f.bvalue or 0.0 for f in firsts], dtype=np.float64)
    g = np.zeros((n, 3))
    for i, f in enumerate(firsts):
        if f.gradient is not None:
            g[i] = f.gradient
    zero = np.all(np.abs(g) < _ZERO, axis=1)
    varies = bool(np.any(b != b[0])) or float(b.min()) > 50.0 or not bool(zero[0])
    if not varies:
        if not bool(np.any(np.any(g != g[0], axis=1))):
            return None
        b[zero] = 0.0
    derived = (np.abs(b) > _ZERO) & zero
    remove = np.zeros(n, dtype=bool)
    if vendor == "GE":
        directions = acquisition.get("diffusion_directions")
        if directions == 0:
            remove = derived
        else:
            b[derived] = 0.0
    elif vendor == "Philips":
        remove = derived
    isotropic = bool(np.all(derived)) if vendor in ("GE", "Philips") else False
    n_removed = int(remove.sum())
    if n_removed and (n - n_removed) < 2:
        remove[:] = False  # a b=0 + trace pair, or all isotropic: keep every volume
    keep = [i for i in range(n) if not remove[i]]
    bval = b[keep]
    if isotropic:
        return DiffusionTable(keep, bval, None)
    directions_lps = g[keep].copy()
    if frame == "ge_logical":
        _ge_length_scaled(bval, directions_lps)
    if frame in ("ge_logical", "image"):
        if plane is None:
            return DiffusionTable(keep, bval, None)
        for i, vector in enumerate(directions_lps):
            if bval[i] > _ZERO and float(np.linalg.norm(vector)) > _ZERO:
                directions_lps[i] = _ge_to_patient(vector, plane, phase_axis) \
                    if frame == "ge_logical" else _image_to_patient(vector, plane, affine)
    directions_lps[bval <= _ZERO] = 0.0
    return DiffusionTable(keep, bval, fsl_bvecs(np.asarray(affine, dtype=np.float64),
                                                 directions_lps))
