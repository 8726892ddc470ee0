"""Slice timing of an assembled volume, in its slice (k) order, following dcm2niix.

Sources, all acquisition parameters derived at ingest:

* mosaics and grids (Siemens, UIH): the tile times of the first volume whose times lie
  within the repetition time (CMRR multiband sequences store impossible times in the first
  volume; dcm2niix then takes the second);
* frames of enhanced objects and single-slice instances (Siemens XA): the time of the
  frame at each slice location of the first volume;
* GE: computed from the protocol's slice order, multiband factor, repetition time and
  group delay, as dcm2niix's ``sliceTimeGE`` does (GE does not record slice times),
  assigned to slices in instance order.

All times are made relative to the earliest slice of the volume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset

from lake.nifti._volume import Assembled, instance_order

__all__ = ["ge_repetition_delay", "ge_slice_times", "slice_timing"]

Acquisition = Mapping[str, Any]


def _relative(times: Sequence[float]) -> list[float]:
    earliest = min(times)
    return [t - earliest for t in times]


def _plausible(times: Sequence[float], tr_s: float | None, tiles: int, multiband: int) -> bool:
    """dcm2niix's checkSliceTiming: times spread within one TR (or all equal when every
    slice is excited at once)."""
    spread = max(times) - min(times)
    if spread == 0:
        return multiband == tiles
    return tr_s is None or spread <= tr_s


def ge_repetition_delay(acquisition: Acquisition) -> float:
    """Seconds dcm2niix adds to a GE repetition time: the group delay of epiRT and
    multiphase EPI (RepetitionTime reports the sampling rate without it)."""
    delay = acquisition.get("volume_delay")
    variant = acquisition.get("epi_variant")
    if not isinstance(delay, float) or delay <= 0 or variant not in ("realtime", "multiphase"):
        return 0.0
    return delay


def ge_slice_times(acquisition: Acquisition, n_slices: int, tr_ms: float) -> list[float] | None:
    """dcm2niix's GE slice times (ms) by slice index, or None when it computes none.

    Parameters
    ----------
    acquisition : mapping
        Parameters of the first instance (epi_variant, slice_order, multiband factor,
        volume_delay, software version and release).
    n_slices : int
        Slices per volume.
    tr_ms : float
        RepetitionTime (0018,0080) in ms, without the group delay.
    """
    variant = acquisition.get("epi_variant")
    if variant not in ("realtime", "multiphase") or n_slices < 2:
        return None
    delay_s = acquisition.get("volume_delay")
    delay = float(delay_s) * 1000.0 if isinstance(delay_s, float) else 0.0
    if variant == "multiphase" and delay < -0.5:
        return None  # variable delays: dcm2niix computes none
    delay = max(delay, 0.0)
    multiband = acquisition.get("multiband_acceleration_factor")
    mb = multiband if isinstance(multiband, int) and multiband > 1 else 1
    version = acquisition.get("software_version")
    release = acquisition.get("software_release")
    major = float(version) if isinstance(version, float) else 0.0
    is27r3 = major >= 27.1 or (int(major) == 27 and isinstance(release, int) and release >= 3)
    if mb > 1 and major < 26.0:
        return None
    excitations = math.ceil(n_slices / mb)
    if mb > 1 and not is27r3 and excitations % 2 == 0:
        excitations += 1
    per_slice = tr_ms / excitations  # (TR + delay - delay) / excitations
    interleaved = acquisition.get("slice_order") != "sequential"
    times = [0.0] * excitations
    if not interleaved:
        times = [i * per_slice for i in range(excitations)]
    else:
        odd = (excitations - 1) // 2
        for i in range(excitations):
            times[i] = (i // 2) * per_slice if i % 2 == 0 else (odd + (i + 1) // 2) * per_slice
        if mb > 1 and is27r3 and excitations > 2 and excitations % 2 == 0:
            times[-1], times[-3] = times[-3], times[-1]
    return [times[i % excitations] for i in range(n_slices)]


def slice_timing(
    assembled: Assembled,
    datasets: Sequence[Dataset],
    acquisitions: Sequence[Acquisition],
    vendor: str | None,
    tr_ms: float | None,
) -> list[float] | None:
    """Slice acquisition times (s, relative) in the slice order of ``assembled``."""
    first = assembled.volumes[0][0]
    acquisition = acquisitions[first.source]
    n_slices = int(assembled.data.shape[1])
    tr_s = tr_ms / 1000.0 if tr_ms else None
    if assembled.mosaic:
        multiband = acquisition.get("multiband_acceleration_factor")
        mb = multiband if isinstance(multiband, int) else 1
        for volume in assembled.volumes:
            times = acquisitions[volume[0].source].get("slice_timing")
            if isinstance(times, list) and len(times) == n_slices \
                    and _plausible(times, tr_s, n_slices, mb):
                return _relative(times)
        return None
    if vendor == "GE":
        if len(assembled.volumes) < 2 or tr_ms is None:
            return None
        computed = ge_slice_times(acquisition, n_slices, tr_ms)
        if computed is None:
            return None
        # dcm2niix indexes the times by the instance order of the first volume
        volume = assembled.volumes[0]
        by_instance = sorted(
            range(n_slices),
            key=lambda k: (instance_order(datasets[volume[k].source]), volume[k].frame or 0),
        )
        times_ms = [0.0] * n_slices
        for rank, k in enumerate(by_instance):
            times_ms[k] = computed[rank]
        return [t / 1000.0 for t in times_ms]
    for volume in assembled.volumes[:2]:
        frame_times = [f.slice_time for f in volume]
        if all(t is not None for t in frame_times) and len(frame_times) == n_slices:
            clean = [float(t) for t in frame_times if t is not None]
            if n_slices > 1 and max(clean) == min(clean):
                continue
            return _relative(clean)
    return None
