"""The text layer of a PDF, glyph by glyph, and its redaction in the content streams.

Every text-showing operator (``Tj``, ``TJ``, ``'``, ``"``) of every page and of every form
XObject and tiling pattern they draw is read with its font (:mod:`._pdf_fonts`); glyphs are
grouped into words the way a reader sees them: a space, a jump of the text position (a new
line, a gap wider than a fraction of the font size) or a wide ``TJ`` kerning ends a word. A
redacted glyph is *removed* from its string and replaced by a ``TJ`` displacement of the
same width, so the rest of the line stays where it was: the text is gone from the file, not
painted over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pikepdf
from pikepdf import ContentStreamInstruction, Name, Operator

from lake.documents._pdf_fonts import Font, Glyph, load_font

__all__ = ["MAX_OPERATORS", "PageText", "read_text"]

Matrix = tuple[float, float, float, float, float, float]
_IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_GAP = 0.12  # a gap wider than this many ems ends a word
_LINE = 0.5  # a move across the line of more than this many ems ends a word
_BACK = 0.5  # a move back of more than this many ems ends a word
MAX_OPERATORS = 2_000_000  # content-stream operators read per PDF at most (bounded time)
_HIDDEN_KEYS = ("/ActualText", "/Alt", "/E", "/T")  # marked-content text a reader shows


def _mul(m: Matrix, n: Matrix) -> Matrix:
    a, b, c, d, e, f = m
    A, B, C, D, E, F = n
    return (a * A + b * C, a * B + b * D, c * A + d * C, c * B + d * D,
            e * A + f * C + E, e * B + f * D + F)


def _translate(tx: float, ty: float) -> Matrix:
    return (1.0, 0.0, 0.0, 1.0, tx, ty)


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


@dataclass
class _TextState:
    font: Font | None = None
    size: float = 0.0
    tc: float = 0.0
    tw: float = 0.0
    th: float = 1.0
    tl: float = 0.0


@dataclass(frozen=True)
class _Shown:
    """Where a glyph came from: instruction, string within a TJ array, glyph within it."""

    glyph: Glyph
    instruction: int
    item: int
    index: int
    size: float
    tc: float
    tw: float


@dataclass
class _Unit:
    """One content stream (a page's, a form's or a pattern's) and what it shows."""

    owner: pikepdf.Object
    is_page: bool
    page: int
    instructions: list[ContentStreamInstruction | pikepdf.ContentStreamInlineImage]
    words: list[list[_Shown]] = field(default_factory=list)
    strings: dict[tuple[int, int], list[_Shown]] = field(default_factory=dict)


class _Reader:
    """Interprets the operators that matter for text, collecting glyphs and words."""

    def __init__(self, pdf: pikepdf.Pdf) -> None:
        self.pdf = pdf
        self.units: list[_Unit] = []
        self.images: list[pikepdf.Object] = []
        self.inline_images: list[pikepdf.PdfInlineImage] = []
        self._seen: set[tuple[int, int]] = set()
        self._fonts: dict[tuple[int, int], Font] = {}
        self.page = 0
        self.image_pages: set[int] = set()
        self.operators = 0

    def _font(self, resources: pikepdf.Object, name: object) -> Font | None:
        fonts = resources.get("/Font") if isinstance(resources, pikepdf.Dictionary) else None
        if not isinstance(fonts, pikepdf.Dictionary) or not isinstance(name, Name):
            return load_font(pikepdf.Null())
        obj = fonts.get(str(name))
        key = obj.objgen if isinstance(obj, pikepdf.Object) else (0, 0)
        if key != (0, 0) and key in self._fonts:
            return self._fonts[key]
        font = load_font(obj if obj is not None else pikepdf.Null())
        if key != (0, 0):
            self._fonts[key] = font
        return font

    def read(self, owner: pikepdf.Object, resources: pikepdf.Object, ctm: Matrix,
             state: _TextState, is_page: bool) -> None:
        key = owner.objgen
        if key != (0, 0):
            if key in self._seen:
                return
            self._seen.add(key)
        try:
            instructions = list(pikepdf.parse_content_stream(owner))
        except pikepdf.PdfError as exc:
            raise ValueError("a content stream cannot be parsed") from exc
        self.operators += len(instructions)
        if self.operators > MAX_OPERATORS:
            raise OverflowError("the PDF draws more operators than the lake reads")
        unit = _Unit(owner, is_page, self.page, instructions)
        self.units.append(unit)
        self._interpret(unit, resources, ctm, state)

    def _interpret(self, unit: _Unit, resources: pikepdf.Object, ctm: Matrix,
                   state: _TextState) -> None:
        stack: list[tuple[Matrix, _TextState]] = []
        tm = tlm = _IDENTITY
        word: list[_Shown] = []
        last_end: tuple[float, float] | None = None
        last_em: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)

        def end_word() -> None:
            nonlocal word
            if word:
                unit.words.append(word)
                word = []

        def show(data: bytes, instruction: int, item: int) -> None:
            nonlocal tm, last_end, last_em
            font = state.font or load_font(pikepdf.Null())
            shown = unit.strings.setdefault((instruction, item), [])
            for index, glyph in enumerate(font.glyphs(data)):
                trm = _mul(tm, ctm)
                origin = (trm[4], trm[5])
                if last_end is not None and self._breaks(origin, last_end, last_em,
                                                         font.widths_known):
                    end_word()
                record = _Shown(glyph, instruction, item, index, state.size, state.tc,
                                state.tw if glyph.code == b" " else 0.0)
                shown.append(record)
                if glyph.text.isspace() or not glyph.text:
                    end_word()
                else:
                    word.append(record)
                advance = (glyph.width * state.size + state.tc + record.tw) * state.th
                tm = _mul(_translate(advance, 0.0), tm)
                end = _mul(tm, ctm)
                last_end = (end[4], end[5])
                last_em = self._em(trm, state.size)

        def kern(amount: float) -> None:
            nonlocal tm, last_end
            if -amount / 1000 > _GAP:
                end_word()
            tm = _mul(_translate(-amount / 1000 * state.size * state.th, 0.0), tm)
            end = _mul(tm, ctm)
            if last_end is not None:
                last_end = (end[4], end[5])

        for i, inst in enumerate(unit.instructions):
            if not isinstance(inst, ContentStreamInstruction):
                self.inline_images.append(inst.iimage)
                continue
            op = str(inst.operator)
            ops = inst.operands
            if op == "q":
                stack.append((ctm, _TextState(**vars(state))))
            elif op == "Q":
                if stack:
                    ctm, saved = stack.pop()
                    state = saved
            elif op == "cm" and len(ops) == 6:
                ctm = _mul(tuple(_num(v) for v in ops), ctm)  # type: ignore[arg-type]
            elif op == "BT":
                tm = tlm = _IDENTITY
            elif op == "Tf" and len(ops) == 2:
                state.font = self._font(resources, ops[0])
                state.size = _num(ops[1])
            elif op == "Tc" and ops:
                state.tc = _num(ops[0])
            elif op == "Tw" and ops:
                state.tw = _num(ops[0])
            elif op == "Tz" and ops:
                state.th = _num(ops[0]) / 100
            elif op == "TL" and ops:
                state.tl = _num(ops[0])
            elif op in ("Td", "TD") and len(ops) == 2:
                if op == "TD":
                    state.tl = -_num(ops[1])
                tlm = _mul(_translate(_num(ops[0]), _num(ops[1])), tlm)
                tm = tlm
            elif op == "Tm" and len(ops) == 6:
                tlm = tm = tuple(_num(v) for v in ops)  # type: ignore[assignment]
            elif op in ("T*", "'", '"'):
                if op == '"' and len(ops) == 3:
                    state.tw, state.tc = _num(ops[0]), _num(ops[1])
                tlm = _mul(_translate(0.0, -state.tl), tlm)
                tm = tlm
                if op != "T*" and ops and isinstance(ops[-1], pikepdf.String):
                    show(bytes(ops[-1]), i, 0)
            elif op == "Tj" and ops and isinstance(ops[0], pikepdf.String):
                show(bytes(ops[0]), i, 0)
            elif op == "TJ" and ops and isinstance(ops[0], pikepdf.Array):
                for item, element in enumerate(ops[0]):
                    if isinstance(element, pikepdf.String):
                        show(bytes(element), i, item)
                    else:
                        kern(_num(element))
            elif op == "Do" and ops:
                end_word()
                self._draw(resources, ops[0], ctm, state)
            elif op in ("scn", "SCN"):
                self._pattern(resources, list(ops), ctm, state)
        end_word()

    @staticmethod
    def _em(trm: Matrix, size: float) -> tuple[float, float, float, float]:
        scale = abs(size) or 1.0
        return (trm[0] / scale, trm[1] / scale, trm[2] / scale, trm[3] / scale)

    @staticmethod
    def _breaks(origin: tuple[float, float], end: tuple[float, float],
                em: tuple[float, float, float, float], widths_known: bool) -> bool:
        dx, dy = origin[0] - end[0], origin[1] - end[1]
        a, b, c, d = em  # one em along and across the text line, in device space
        det = a * d - b * c
        if not det:
            return bool(dx or dy)
        along = (dx * d - dy * c) / det  # delta = along * (a, b) + across * (c, d)
        across = abs((dy * a - dx * b) / det)
        if not widths_known:
            return abs(along) > 1e-3 or across > 1e-3
        return across > _LINE or along > _GAP or along < -_BACK

    def _draw(self, resources: pikepdf.Object, name: object, ctm: Matrix,
              state: _TextState) -> None:
        xobjects = resources.get("/XObject") if isinstance(resources, pikepdf.Dictionary) else None
        if not isinstance(xobjects, pikepdf.Dictionary) or not isinstance(name, Name):
            return
        xobj = xobjects.get(str(name))
        if not isinstance(xobj, pikepdf.Stream):
            return
        subtype = xobj.get("/Subtype")
        if subtype == "/Image":
            self.images.append(xobj)
            self.image_pages.add(self.page)
        elif subtype == "/Form":
            matrix = xobj.get("/Matrix")
            form_m = tuple(_num(v) for v in matrix) if isinstance(matrix, pikepdf.Array) and len(
                matrix) == 6 else _IDENTITY
            inner = xobj.get("/Resources")
            self.read(xobj, inner if isinstance(inner, pikepdf.Dictionary) else resources,
                      _mul(form_m, ctm), _TextState(**vars(state)), False)  # type: ignore[arg-type]

    def _pattern(self, resources: pikepdf.Object, ops: list[object], ctm: Matrix,
                 state: _TextState) -> None:
        if not ops or not isinstance(ops[-1], Name):
            return
        patterns = resources.get("/Pattern") if isinstance(resources, pikepdf.Dictionary) else None
        if not isinstance(patterns, pikepdf.Dictionary):
            return
        pattern = patterns.get(str(ops[-1]))
        if isinstance(pattern, pikepdf.Stream) and pattern.get("/PatternType") == 1:
            inner = pattern.get("/Resources")
            self.read(pattern, inner if isinstance(inner, pikepdf.Dictionary) else resources,
                      ctm, _TextState(**vars(state)), False)


@dataclass
class PageText:
    """The text layer of a whole PDF: words with where each glyph was drawn."""

    pdf: pikepdf.Pdf
    units: list[_Unit]
    images: list[pikepdf.Object]
    image_pages: set[int]
    inline_images: list[pikepdf.PdfInlineImage]

    def pages_without_content(self, pages: int) -> list[int]:
        """Pages that show neither text nor an image (scans drawn otherwise, outlined text)."""
        shown = {unit.page for unit in self.units if unit.words} | self.image_pages
        return [i for i in range(pages) if i not in shown]

    def words(self) -> Iterator[str]:
        """Every word, as a reader of the text layer sees it."""
        for unit in self.units:
            for word in unit.words:
                yield "".join(s.glyph.text for s in word)

    @property
    def has_text(self) -> bool:
        return any(unit.words for unit in self.units)

    def redact(self, identifying: Callable[[str], bool]) -> int:
        """Remove every glyph of every word ``identifying`` says must go; returns the count."""
        removed = 0
        for unit in self.units:
            gone: set[tuple[int, int, int]] = set()
            for word in unit.words:
                if identifying("".join(s.glyph.text for s in word)):
                    gone.update((s.instruction, s.item, s.index) for s in word)
            removed += len(gone)
            changed = _strip_marked_text(unit)
            if gone or changed:
                _rewrite(self.pdf, unit, gone)
        return removed


def _strip_marked_text(unit: _Unit) -> bool:
    """Drop ActualText/Alt/E/T from inline marked-content properties (readers show them)."""
    changed = False
    for inst in unit.instructions:
        if not isinstance(inst, ContentStreamInstruction) or str(inst.operator) != "BDC":
            continue
        props = inst.operands[-1] if inst.operands else None
        if isinstance(props, pikepdf.Dictionary):
            for key in _HIDDEN_KEYS:
                if key in props:
                    del props[key]
                    changed = True
    return changed


def _array(unit: _Unit, instruction: int, item: int, data: bytes,
           gone: set[tuple[int, int, int]]) -> list[object]:
    """The TJ array elements that replace one string with some of its glyphs removed."""
    shown = unit.strings.get((instruction, item), [])
    if not any((instruction, item, s.index) in gone for s in shown):
        return [pikepdf.String(data)]
    out: list[object] = []
    kept = b""
    width = 0.0
    for s in shown:
        if (instruction, item, s.index) in gone:
            if kept:
                out.append(pikepdf.String(kept))
                kept = b""
            size = s.size or 1.0
            width += s.glyph.width + (s.tc + s.tw) / size
        else:
            if width:
                out.append(round(-1000 * width, 3))
                width = 0.0
            kept += s.glyph.code
    if kept:
        out.append(pikepdf.String(kept))
    if width:
        out.append(round(-1000 * width, 3))
    return out


def _rewrite(pdf: pikepdf.Pdf, unit: _Unit, gone: set[tuple[int, int, int]]) -> None:
    touched = {g[0] for g in gone}
    new: list[ContentStreamInstruction | pikepdf.ContentStreamInlineImage] = []
    for i, inst in enumerate(unit.instructions):
        if i not in touched or not isinstance(inst, ContentStreamInstruction):
            new.append(inst)
            continue
        op = str(inst.operator)
        ops = list(inst.operands)
        if op == "TJ":
            elements: list[object] = []
            for item, element in enumerate(ops[0]):
                if isinstance(element, pikepdf.String):
                    elements.extend(_array(unit, i, item, bytes(element), gone))
                else:
                    elements.append(element)
            new.append(ContentStreamInstruction([pikepdf.Array(elements)], Operator("TJ")))
            continue
        if op == '"':
            new.append(ContentStreamInstruction([ops[0]], Operator("Tw")))
            new.append(ContentStreamInstruction([ops[1]], Operator("Tc")))
        if op in ("'", '"'):
            new.append(ContentStreamInstruction([], Operator("T*")))
        data = bytes(ops[-1])
        new.append(ContentStreamInstruction([pikepdf.Array(_array(unit, i, 0, data, gone))],
                                            Operator("TJ")))
    unit.instructions = new
    content = pikepdf.unparse_content_stream(new)
    if unit.is_page:
        unit.owner.Contents = pdf.make_stream(content)
    else:
        unit.owner.write(content)


def read_text(pdf: pikepdf.Pdf) -> PageText:
    """The text layer of every page of ``pdf`` (and the image XObjects the pages draw).

    Raises
    ------
    ValueError
        When a content stream cannot be parsed.
    OverflowError
        When the pages draw more than :data:`MAX_OPERATORS` operators.
    """
    reader = _Reader(pdf)
    for number, page in enumerate(pdf.pages):
        reader.page = number
        obj = page.obj
        resources = obj.get("/Resources")
        if "/Contents" not in obj:
            continue
        reader.read(obj, resources if isinstance(resources, pikepdf.Dictionary)
                    else pikepdf.Dictionary(), _IDENTITY, _TextState(), True)
    return PageText(pdf, reader.units, reader.images, reader.image_pages, reader.inline_images)
