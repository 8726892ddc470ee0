"""The fast encoders give exactly what pydicom gives, on pydicom's whole test corpus."""

from __future__ import annotations

import copy
import io
import json
import re
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from lake import DeidRefusedError
from lake.deid import Deidentifier, load_profile
from lake.ingest._encode import encode_part10, header_json
from lake.vault import Secret
from tests.deid_corpus import write_corpus


def _corpus() -> list[str]:
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                ds = dcmread(path)
                if ds.file_meta.get("TransferSyntaxUID") and "SOPClassUID" in ds:
                    files.append(path)
            except Exception:  # noqa: BLE001 - pydicom's corpus has deliberately broken files
                continue
    return files


CORPUS = _corpus()


@pytest.fixture(autouse=True)
def _lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)


def test_corpus_is_large() -> None:
    assert len(CORPUS) > 100


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_part10_bytes_equal_pydicom(path: str) -> None:
    ref = io.BytesIO()
    try:
        dcmwrite(ref, dcmread(path), enforce_file_format=True)
    except (TypeError, ValueError):
        pytest.skip("pydicom itself cannot write this file")
    assert encode_part10(dcmread(path)) == ref.getvalue()
    # Values read on demand (pydicom itself then writes some elements differently).
    assert _same_as_dcmwrite(dcmread(path, defer_size=64))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_json_equals_pydicom(path: str) -> None:
    def handler(_elem: object) -> str:
        return "urn:x"

    try:
        expected = dcmread(path).to_json_dict(4096, handler)
    except ValueError:
        pytest.skip("pydicom itself cannot serialise this file")
    assert json.dumps(header_json(dcmread(path), 4096, handler), sort_keys=True) == json.dumps(
        expected, sort_keys=True
    )


@pytest.mark.filterwarnings("ignore")
def test_modified_elements_are_encoded_by_pydicom() -> None:
    path = CORPUS[0]
    ds = dcmread(path)
    ds.PatientName = "Changed^Name"
    ds.add_new(0x00204000, "LT", "a comment")
    ref = io.BytesIO()
    dcmwrite(ref, ds, enforce_file_format=True)
    assert encode_part10(ds) == ref.getvalue()
    assert dcmread(io.BytesIO(encode_part10(ds))).PatientName == "Changed^Name"


def _deidentified_sources(tmp: Path) -> list[Path]:
    write_corpus(tmp, n_patients=1)
    planted = sorted(p for p in tmp.rglob("*") if p.is_file())
    return planted + [Path(p) for p in CORPUS]


# PS3.5 6.2: every value has an even length; the padding byte by VR.
_PADDING = dict.fromkeys(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                          "ST", "TM", "UC", "UR", "UT"), b" ") | dict.fromkeys(
                              ("UI", "OB", "UN"), b"\x00")


def _padded(ds: Dataset) -> Dataset:
    """``ds`` with every raw value of odd length padded (at any depth of items read):
    what the lake writes for a value received odd, where pydicom copies it as it is."""
    for tag, elem in list(ds._dict.items()):
        if isinstance(elem, RawDataElement):
            vr = elem.VR or dictionary_VR(tag)
            odd = isinstance(elem.value, bytes) and len(elem.value) % 2
            if odd and elem.length != 0xFFFFFFFF and vr in _PADDING:
                value = elem.value + _PADDING[vr]
                ds._dict[tag] = elem._replace(value=value, length=len(value))
        elif elem.VR == "SQ":
            for item in elem.value:
                _padded(item)
    return ds


def _same_as_dcmwrite(ds: Dataset) -> bool | None:
    """encode_part10 and dcmwrite on independent copies (both convert elements in place),
    raw values received odd padded first for dcmwrite (:func:`_padded`)."""
    ref = io.BytesIO()
    try:
        dcmwrite(ref, _padded(copy.deepcopy(ds)), enforce_file_format=True)
    except (TypeError, ValueError):
        return None  # pydicom itself cannot write it
    return encode_part10(copy.deepcopy(ds)) == ref.getvalue()


def _safe_private_site(tmp_path: Path) -> str:
    (tmp_path / "site.toml").write_text(
        'name = "site"\nversion = "t1"\nextends = "research"\n'
        'options = ["retain-safe-private", "clean-structured-content"]\n'
    )
    return str(tmp_path / "site.toml")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("profile", ["basic", "research", "teaching", "safe-private site"])
def test_deidentified_bytes_equal_pydicom(profile: str, tmp_path: Path) -> None:
    """After the engine: raw, rewritten and engine-made elements, sequences at any depth."""
    name = _safe_private_site(tmp_path) if profile == "safe-private site" else profile
    engine = Deidentifier(load_profile(name), Secret(b"encode-test-secret-0123456789abc"))
    compared = 0
    for path in _deidentified_sources(tmp_path / "corpus"):
        ds = dcmread(path)
        try:
            engine.apply(ds)
        except DeidRefusedError:
            continue
        same = _same_as_dcmwrite(ds)
        if same is None:
            continue
        assert same, path.name
        compared += 1
    assert compared > 50


@pytest.mark.filterwarnings("ignore")
def test_sequences_built_in_memory_equal_pydicom() -> None:
    """Items made in memory, nested three deep, defined and undefined lengths."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))

    def item(depth: int) -> Dataset:
        inner = Dataset()
        inner.CodeValue = "113100"  # SH, even length
        inner.CodeMeaning = "Basic Application Confidentiality Profile"  # LO, odd length
        inner.add_new(0x00280106, "US", 7)  # a fixed VR
        inner.add_new(0x00281101, "US or SS", b"\x00\x01")  # ambiguous: pydicom corrects it
        if depth:
            inner.ContentSequence = [item(depth - 1), Dataset()]
        return inner

    ds.DeidentificationMethodCodeSequence = [item(2), item(0)]
    ds.ReferencedImageSequence = [item(1)]
    plain = Dataset()
    plain.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    plain.ReferencedSOPInstanceUID = "1.2.3.4.5"  # odd length: padded with NUL
    plain.is_undefined_length_sequence_item = True
    ds.SourceImageSequence = [plain]
    ds["SourceImageSequence"].is_undefined_length = True
    mine = encode_part10(ds)
    ref = io.BytesIO()
    dcmwrite(ref, ds, enforce_file_format=True)
    assert mine == ref.getvalue()
    back = dcmread(io.BytesIO(mine))
    assert back.DeidentificationMethodCodeSequence[0].ContentSequence[0].CodeValue == "113100"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"


@pytest.mark.filterwarnings("ignore")
def test_edge_elements_equal_pydicom() -> None:
    """Values pydicom writes in its own way, each on an independent copy."""
    base = dcmread(get_testdata_file("CT_small.dcm"))
    multi = copy.deepcopy(base)
    multi.SOPInstanceUID = ["1.2.3.4", "1.2.3.5"]  # multi-valued: joined with a backslash
    big = copy.deepcopy(base)  # a raw short-VR value over 64 KB: written raw, as UN
    big[0x00081030] = RawDataElement(
        BaseTag(0x00081030), "LO", 90000, b"A  " * 30000, 0, False, True
    )
    group_length = copy.deepcopy(base)
    group_length.add_new(0x00040000, "UL", 0)  # kept by dcmwrite (groups 0-6)
    odd_pixels = copy.deepcopy(base)
    odd_pixels[0x7FE00010] = RawDataElement(
        BaseTag(0x7FE00010), "OW", 3, b"\x01\x02\x03", 0, False, True
    )
    for ds in (multi, big, group_length, odd_pixels):
        assert _same_as_dcmwrite(ds)
    # The file meta written follows the dataset; the dataset's own file meta is left alone.
    changed = copy.deepcopy(base)
    changed.SOPInstanceUID = "1.2.3.9"
    del changed.file_meta.ImplementationVersionName
    meta_before = dict(changed.file_meta.items())
    written = dcmread(io.BytesIO(encode_part10(changed)))
    assert written.file_meta.MediaStorageSOPInstanceUID == "1.2.3.9"
    assert "ImplementationVersionName" in written.file_meta
    assert dict(changed.file_meta.items()) == meta_before


@pytest.mark.filterwarnings("ignore")
def test_json_equals_pydicom_after_deidentification(tmp_path: Path) -> None:
    """De-identified datasets (sequences walked and partly rewritten by the engine, items
    still holding raw elements) serialise as pydicom serialises them."""
    from lake import DeidRefusedError
    from lake.deid import Deidentifier, load_profile
    from lake.vault import Secret
    from tests.deid_corpus import write_corpus

    write_corpus(tmp_path, 2)
    engine = Deidentifier(load_profile("basic"), Secret(bytes(range(32))))

    def handler(_elem: object) -> str:
        return "urn:x"

    checked = 0
    for path in sorted(tmp_path.rglob("*.dcm")):
        ds = dcmread(path)
        try:
            engine.apply(ds)
        except DeidRefusedError:
            continue
        expected = json.dumps(ds.to_json_dict(4096, handler), sort_keys=True)
        assert json.dumps(header_json(ds, 4096, handler), sort_keys=True) == expected, path.name
        checked += 1
    assert checked >= 8


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                    "1.2.840.10008.1.2.1.99")  # implicit LE, explicit LE and BE, deflated


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", _NATIVE_SYNTAXES, ids=("implicit", "explicit", "big", "deflated"))
def test_every_native_syntax_is_written_as_pydicom_writes_it(syntax: str) -> None:
    """Each uncompressed file of the corpus written in each native syntax: the bytes of
    dcmwrite (elements converted where the encoding changes, raw ones copied where not)."""
    compared = 0
    for path in CORPUS:
        ds = dcmread(path)
        if ds.file_meta.TransferSyntaxUID not in _NATIVE_SYNTAXES:
            continue  # encapsulated pixel data has no native form
        ds.file_meta.TransferSyntaxUID = syntax
        same = _same_as_dcmwrite(ds)
        if same is None:
            continue
        assert same, path
        compared += 1
    assert compared > 60


@pytest.mark.filterwarnings("ignore")
def test_a_changed_character_set_is_written_as_pydicom_writes_it() -> None:
    """pydicom re-encodes every text of a dataset whose Specific Character Set changed."""
    compared = 0
    for path in [*get_charset_files("chr*.dcm"), get_testdata_file("CT_small.dcm")]:
        ds = dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        same = _same_as_dcmwrite(ds)
        if same is None:
            continue
        assert same, path
        compared += 1
    assert compared > 12


def _nested(ds: Dataset, depth: int, leaf: Dataset) -> Dataset:
    inner = leaf
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_64_levels_of_sequences_equal_pydicom(name: str) -> None:
    """Deep content trees (built in memory, and read back raw) in three transfer syntaxes."""
    leaf = Dataset()
    leaf.TextValue = "leaf"
    built = _nested(dcmread(get_testdata_file(name)), 64, leaf)
    assert _same_as_dcmwrite(built)
    raw = dcmread(io.BytesIO(encode_part10(copy.deepcopy(built))))
    assert _same_as_dcmwrite(raw)


def test_an_error_deep_in_a_sequence_is_raised_once() -> None:
    """pydicom's writer wraps an exception once per level with the whole chain so far (about
    2.6 times longer a level: 4 MB at 8 levels, 29 MB at 10); the encoder raises it once, as
    it is. (64 levels: tests/test_ingest_bounds.py, in a child process.)"""
    leaf = Dataset()
    leaf.add_new(0x00189219, "SS or US or OW", 5)  # an ambiguous VR nothing resolves
    ds = _nested(dcmread(get_testdata_file("CT_small.dcm")), 8, leaf)
    with pytest.raises(ValueError, match="ambiguous VR") as raised:
        encode_part10(ds)
    assert len(str(raised.value)) < 1000


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _sequence_file(items: list[Dataset], *, undefined: bool = False) -> Dataset:
    """A file whose top-level sequence (defined length: read raw) holds ``items``; nested
    sequences and items of undefined length when ``undefined``."""
    from pydicom.sequence import Sequence as Seq

    inner = Seq([_item(CodeValue="T-1", CodingSchemeDesignator="SRT", CodeMeaning="Heart")])
    inner.is_undefined_length = undefined
    for item in items:
        item.is_undefined_length_sequence_item = undefined
        item.ConceptNameCodeSequence = inner
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.ContentSequence = Seq(items)
    ds.ContentSequence.is_undefined_length = False
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return dcmread(io.BytesIO(out.getvalue()))


_PLAIN = [_item(ValueType="TEXT", TextValue="no name here", InstanceNumber=3,
                ReferencedFrameNumber=[1, 2], RationalNumeratorValue=[1, -2],
                FloatingPointValue=1.5, SelectorOBValue=b"\x01" * 4000)]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize(("items", "from_bytes"), [
    (_PLAIN, True),
    ([_item(), _item(ValueType="CODE")], True),  # empty items
    ([_item(ValueType="PNAME", PersonName="Doe^Jane=D^J")], True),  # PN read from its bytes
    ([_item(ValueType="PNAME", PersonName="Doe^\x1b(BJane")], False),  # code extensions
    ([_item(SpecificCharacterSet="ISO_IR 100", TextValue="caf\xe9")], False),  # own charset
], ids=["plain", "empty", "person-name", "escape", "own-charset"])
def test_raw_sequences_read_from_their_bytes_equal_pydicom(
    items: list[Dataset], from_bytes: bool, undefined: bool
) -> None:
    from lake.ingest._encode import _raw_sequence

    def handler(_elem: object) -> str:
        return "urn:x"

    ds = _sequence_file(copy.deepcopy(items), undefined=undefined)
    raw = ds.get_item(0x0040A730)
    assert isinstance(raw, RawDataElement) and isinstance(raw.value, bytes)
    expected = copy.deepcopy(ds).to_json_dict(4096, handler)
    assert json.dumps(header_json(ds, 4096, handler), sort_keys=True) == json.dumps(
        expected, sort_keys=True)
    read = _raw_sequence(raw.value, "ascii", 3072, handler)
    assert (read is not None) == from_bytes  # the others are left to pydicom
    if read is not None:
        assert read == expected["0040A730"]["Value"]


@pytest.mark.filterwarnings("ignore")
def test_a_truncated_raw_sequence_is_left_to_pydicom() -> None:
    from lake.ingest._encode import _raw_sequence

    ds = _sequence_file(copy.deepcopy(_PLAIN))
    value = ds.get_item(0x0040A730).value
    for cut in (1, 7, 9, 30, len(value) // 2, len(value) - 1):
        assert _raw_sequence(value[:cut], "ascii", 3072, str) is None


_NAMES = [b"", b"  ", b"\x00", b"Doe^Jane", b"Doe^Jane ", b"Doe^Jane=D^J", b"A^B==E", b"=", b"==",
          b"A=", b"=B", b"A\\B", b"A^B\\C=D=E", b"A^B=\x00", b" A", b"A \\ B ", b"A=B=C=D",
          b"A\\", b"\\", b"\\B", b"A\\=", b"caf\xc3\xa9^J", b"caf\xe9^J", b"\x1b$B^J",
          b"a\xff\xfeb"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("charset", ["", "ISO_IR 100", "ISO_IR 192"])
def test_person_names_read_from_their_bytes_equal_pydicom(charset: str) -> None:
    """The PN fast path (``_person_names``) gives pydicom's JSON for every name, or leaves
    the name to pydicom (which raises where pydicom raises)."""
    from lake.ingest._encode import _charset, _person_names

    def handler(_elem: object) -> str:
        return "urn:x"

    def fast_path(name: bytes, ds: Dataset) -> list[dict[str, str]] | None:
        try:
            return _person_names(name, _charset(ds) or "ascii")
        except UnicodeDecodeError:
            return None  # _raw_entry leaves it to pydicom

    source = dcmread(get_testdata_file("CT_small.dcm"))
    if charset:
        source.SpecificCharacterSet = charset
    out = io.BytesIO()
    source.save_as(out, enforce_file_format=True)
    for name in _NAMES:
        read = dcmread(io.BytesIO(out.getvalue()))  # its character set as read
        value = name + b" " * (len(name) % 2)
        element = struct.pack("<HH2sH", 0x0040, 0xA123, b"PN", len(value)) + value
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(element)) + element
        # the name at the top level and in a raw sequence's item, as dcmread leaves them
        for tag, vr, raw in ((0x00100010, "PN", value), (0x0040A730, "SQ", item)):
            read[tag] = RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, False, True)
        try:
            expected = json.dumps(copy.deepcopy(read).to_json_dict(4096, handler), sort_keys=True)
        except (IndexError, UnicodeDecodeError) as exc:
            with pytest.raises(type(exc)):
                header_json(read, 4096, handler)
            assert fast_path(name, read) is None
            continue
        assert json.dumps(header_json(read, 4096, handler), sort_keys=True) == expected, name
        fast = fast_path(name, read)
        if fast is not None:
            assert fast == json.loads(expected)["00100010"].get("Value", []), name


@pytest.mark.filterwarnings("ignore")
def test_file_meta_is_validated_as_pydicom_validates_it() -> None:
    """``_validate_file_meta`` leaves, fills in or refuses a file meta exactly as pydicom's
    ``validate_file_meta(enforce_standard=True)``: every element absent, empty or foreign."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileMetaDataset, validate_file_meta

    from lake.ingest._encode import _validate_file_meta

    base = dcmread(get_testdata_file("CT_small.dcm")).file_meta
    base.ImplementationVersionName = "X"
    variants: list[FileMetaDataset] = [FileMetaDataset(dict(base.items()))]
    for tag in (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013):
        absent = FileMetaDataset(dict(base.items()))
        if tag in absent:
            del absent[tag]
        variants.append(absent)
        if tag in base:
            empty = FileMetaDataset(dict(base.items()))
            vr = base[tag].VR
            empty[tag] = DataElement(tag, vr, b"" if vr == "OB" else "")
            variants.append(empty)
    foreign = FileMetaDataset(dict(base.items()))
    foreign._dict[BaseTag(0x00080016)] = DataElement(0x00080016, "UI", "1.2.3")
    variants.append(foreign)
    assert len(variants) > 10
    for meta in variants:
        ours, theirs = copy.deepcopy(meta), copy.deepcopy(meta)
        try:
            validate_file_meta(theirs, enforce_standard=True)
        except (AttributeError, ValueError) as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                _validate_file_meta(ours)
            continue
        _validate_file_meta(ours)
        assert [(e.tag, e.VR, e.value) for e in ours] == [(e.tag, e.VR, e.value) for e in theirs]
