"""Pixel decoding that survives a native decoding plugin's panic.

pydicom decodes RLE Lossless with pylibjpeg-rle (Rust, through pyo3) first and falls back to
its own decoder when a plugin raises an :class:`Exception`. A Rust panic is no Exception:
pyo3 raises ``pyo3_runtime.PanicException``, a :class:`BaseException`, which passes pydicom's
plugin loop and every ``except Exception`` above it (pylibjpeg-rle 2.2.0 panics on a segment
whose last replicate run overruns the frame; pydicom's own decoder decodes that frame, with a
warning). :func:`decode_past_panic` gives the fallback pydicom would have made had the panic
been an Exception; when that fails too it raises :class:`PixelDecodeError`, an Exception each
decode site turns into its own refusal.

It lives in :mod:`lake.nifti` because the converter may depend on nothing of the lake but its
errors; the other decode sites of the lake (de-identification, network, web, exports) use it
from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lake._errors import LakeError, is_native_panic

__all__ = ["PixelDecodeError", "decode_past_panic", "is_native_panic"]

_T = TypeVar("_T")


class PixelDecodeError(LakeError, RuntimeError):
    """A native decoding plugin panicked and pydicom's own decoder could not decode either."""


def decode_past_panic(decode: Callable[..., _T], /, *args: object, **options: Any) -> _T:
    """``decode(*args, **options)``; on a native plugin's panic, ``decode`` again with pydicom's
    own plugin.

    Parameters
    ----------
    decode : callable
        A pydicom decoding call taking ``decoding_plugin`` as a keyword (``ds.decompress``,
        ``pixel_array``, ``decoder.as_array`` bound to its dataset).
    *args
        Passed to ``decode`` (e.g. the dataset of ``pixel_array``), both times: nothing
        that a first attempt consumes (a stream).
    **options
        Passed to ``decode``; ``decoding_plugin`` is replaced by ``"pydicom"`` for the retry.

    Returns
    -------
    What ``decode`` returns.

    Raises
    ------
    PixelDecodeError
        When a plugin panicked and pydicom's own decoder failed too (or has no plugin for the
        transfer syntax). The message names no value of the data. Every other exception of
        ``decode`` (Exceptions, KeyboardInterrupt, SystemExit) propagates unchanged.

    Examples
    --------
    >>> decode_past_panic(lambda **kw: sorted(kw), index=0)
    ['index']
    """
    try:
        return decode(*args, **options)
    except BaseException as exc:
        if not is_native_panic(exc):
            raise
    # the panic is out of scope here, so nothing below chains it (its text is the library's)
    if options.get("decoding_plugin") != "pydicom":
        try:
            return decode(*args, **{**options, "decoding_plugin": "pydicom"})
        except Exception as exc:  # noqa: BLE001 - the fallback's failure is the refusal
            failure = type(exc).__name__
    else:
        failure = "no other decoder"
    raise PixelDecodeError(
        "a native decoding plugin panicked on the pixel data and pydicom's own decoder "
        f"could not decode it either ({failure}); the pixel data is malformed"
    )
