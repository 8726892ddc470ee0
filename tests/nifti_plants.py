"""Real vendor files with identifiers planted where the acquisition-parameter readers look.

Every private element the readers of :mod:`lake.nifti` parse gets a unique token (``TKN`` +
12 characters, as in tests/deid_corpus.py): text-valued private elements at every depth
(per-frame functional groups included), every value of GE's protocol data block (rebuilt and
recompressed, free-text keys included), the values of the Siemens ASCCONV protocol and every
number written as text inside the binary CSA image and series headers (same length, so the
headers stay parseable). A planted file still reads as DICOM; what comes out of it must be
validated numbers and codes only.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

__all__ = ["VENDOR_SAMPLES", "plant"]

_TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "CS", "DS", "IS", "UN", "PN"}
_DIGITS = re.compile(rb"[-+]?[0-9][0-9.]{5,}")
_GE_BLOCK = (0x0025, 0x101B)

#: One or two files of each reader's kind: (repository, glob below In/).
VENDOR_SAMPLES = (
    ("../dcm_qa", "Orientation/ax/axasc35/*"),  # Siemens mosaic: CSA image and series
    ("dcm_qa_ts", "2.dcm"),  # Siemens mosaic, implicit VR
    ("dcm_qa_xa30", "7_func-bold_task-fa_run-1/*"),  # Siemens XA enhanced, private groups
    ("dcm_qa_ge", "01_Ax_DWI_TENSOR_R2/*"),  # GE diffusion, 0019/0043
    ("dcm_qa_stc", "GE/ProtocolDataBlock/mr_0004/*.dcm"),  # GE protocol data block
    ("dcm_qa_philips", "Vanderbilt_2018/601_WIP_dti_ax/*"),  # Philips classic 2001/2005
    ("dcm_qa_enh", "Philips/*"),  # Philips enhanced, per-frame 2005,140F
    ("dcm_qa_stc", "UIH/R002/12_dti_tra_dir16_PA_rot/*"),  # UIH grid, 0065
)


class _Tokens:
    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.made: set[str] = set()

    def __call__(self, length: int = 15) -> str:
        digest = hashlib.sha256(f"{self.seed}/{len(self.made)}".encode()).hexdigest().upper()
        token = ("TKN" + digest)[: max(length, 9)]
        self.made.add(token)
        return token


def _plant_text(raw: bytes, tokens: _Tokens) -> bytes:
    """Every run of 6+ digits in ``raw`` becomes a token of the same length."""
    return _DIGITS.sub(lambda m: tokens(len(m.group(0))).encode(), raw)


def _plant_block(raw: bytes, tokens: _Tokens) -> bytes:
    length = int.from_bytes(raw[:4], "little")
    text = gzip.decompress(raw[4 : 4 + length]).decode("latin-1")
    planted = re.sub(r'^(\w+)\s+"[^"]*"', lambda m: f'{m.group(1)} "{tokens()}"', text,
                     flags=re.MULTILINE)
    body = gzip.compress(planted.encode("latin-1"), mtime=0)
    block = len(body).to_bytes(4, "little") + body
    return block + b"\x00" * (len(block) % 2)


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def plant(ds: Dataset, seed: str) -> set[str]:
    """Plant tokens in the private elements of ``ds`` (in place); return them."""
    tokens = _Tokens(seed)
    for item in _walk(ds):
        for elem in list(item):
            if not elem.tag.is_private or elem.tag.element < 0x1000:
                continue
            if elem.tag == _GE_BLOCK and isinstance(elem.value, bytes):
                elem.value = _plant_block(elem.value, tokens)
            elif elem.VR in ("OB", "UN") and isinstance(elem.value, bytes):
                elem.value = _plant_text(elem.value, tokens)
            elif elem.VR in _TEXT_VRS and elem.VM <= 1:
                elem.VR = "LO" if elem.VR not in ("LT", "ST", "UT") else elem.VR
                elem.value = tokens()
    return tokens.made


def planted_files(vendors: Path, target: Path) -> set[str]:
    """Write every sample with plants below ``target``; return all planted tokens."""
    made: set[str] = set()
    for repository, pattern in VENDOR_SAMPLES:
        files = sorted(p for p in (vendors / repository / "In").glob(pattern)
                       if p.is_file() and p.suffix.lower() not in (".txt", ".md", ".nii"))
        for path in files[:2]:
            ds = pydicom.dcmread(path)
            made |= plant(ds, f"{repository}/{path.name}")
            out = target / repository.strip("./") / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(out)
    return made
