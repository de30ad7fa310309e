#!/usr/bin/env python
"""
Prepare a document-layout detection set in COCO format whose boxes come from the PDFs'
own text layer, so they are exact to the rendered pixel without any labelling.

Source. By default the R manuals (GPL-2) from Debian's ``r-doc-pdf`` package, version
4.2.2.20221110-2, fetched with ``apt-get download`` (or given with ``--deb``), hash-checked
and unpacked in Python (a .deb is an ``ar`` archive holding ``data.tar.xz``). The package's
``fullrefman.pdf`` is ``refman.pdf`` byte for byte but for the trailer's ``/ID``, so only
``refman.pdf`` is read. ``--pdf-dir DIR --name NAME`` reads a user's own PDFs instead.

Objects (COCO categories 1-3: body, heading, code). An object is one contiguous run of text
on one line: the visible glyphs of a page are grouped into lines by baseline, and a line is
split wherever the horizontal gap between two glyphs exceeds ``SPLIT_GAP_EM`` times its
font size (table columns, the two-column argument lists of the reference manual). A glyph
is ``heading`` when its font is at least ``HEADING_SIZE_RATIO`` times the document's body
size (the most common size of its proportional glyphs), else ``code`` when its font is
monospaced, else ``heading`` when bold, else ``body``; a run takes the class of most of its
glyphs (a tie goes to heading, then code). A run's box is the union of its glyphs' tight
boxes (PDFium's ``FPDFText_GetCharBox``, the glyph outlines' bounds).

Coordinates. A page is rendered at ``RENDER_SCALE`` pixels per point (108 dpi), by
rendering it ``SUPERSAMPLING`` times larger and averaging blocks: PDFium snaps glyphs to
whole pixels (a third of one across), which the averaging shrinks to an eighth. A point
(x, y) of the page (y up) maps to pixels (y down) through the page's visible box (its crop
box within its media box, ``[l, b, r, t]``) and its ``/Rotate``; for rotation 0 it is
``((x - l) * sx, (t - y) * sy)``, with ``sx, sy`` the bitmap's size over the visible box's
size. Pages with text that is not horizontal on the rendered page are skipped.

Images. Each page is cropped to its text plus ``IMAGE_PADDING`` pixels and cut between
lines into horizontal bands about ``MAX_IMAGE_HEIGHT`` pixels high, so no box is ever cut
and no image holds more than ``MAX_OBJECTS_PER_IMAGE`` boxes (COCO's evaluation counts at
most 100 detections per image).

Splits go by document, never by page. Default set: the table ``DEFAULT_DOCUMENTS`` (the
reference manual's package chapters count as documents, so that both the Texinfo manuals'
and the reference manual's layouts are in every split); each split takes
``PAGES_PER_SPLIT[split]`` pages spread evenly over its documents' pages (a skipped page
is not replaced). A ``--pdf-dir`` set uses every page: its PDFs, ordered by the sha256 of
their bytes (``content_digest``), fill test until it
holds ``HELD_OUT_FRACTION`` of the pages, then val likewise, and train takes the rest
(at least one PDF each, so at least three PDFs are needed).

Bad input is skipped and counted, and the skips are reported at the end and stored in the
jsons' ``info``: a PDF that cannot be read, a password-protected PDF, a PDF without
visible text (a scan), a duplicate PDF; a page PDFium cannot load, a page without visible
text, a page with text that is not horizontal; a box without ink (text drawn in the
paper's colour, or clipped away). A bad package or PDF of the default set is an error.

Exactness. ``box_ink_agreement`` compares every box with the bounding box of the ink
inside it grown by ``EXACTNESS_MARGIN`` pixels; the summary per split (``info.exactness``)
gives the fraction of boxes at IoU >= 0.9 / 0.95 / 0.99, the minimum and median IoU and
the fraction whose four sides are within 1 px of the ink's.

Usage::

    python scripts/prepare_documents.py [--output DIR] [--deb PATH] [--force]
    python scripts/prepare_documents.py --pdf-dir DIR --name NAME [--output DIR] [--force]

The split jsons are deleted before any image is written and written last, each file to a
temporary name renamed into place; a killed run therefore leaves no json, and the next
run rebuilds. The same PDFs give the same json bytes on every run.
"""

import argparse
import ctypes
import hashlib
import io
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from projects.cascade.data.datasets import dataset_folder
from projects.cascade.data.datasets.documents import SPLITS, THING_CLASSES
from projects.cascade.utils import atomic_write, atomic_write_bytes, sha256_of

DEB_PACKAGE = "r-doc-pdf"
DEB_VERSION = "4.2.2.20221110-2"
DEB_FILE = f"{DEB_PACKAGE}_{DEB_VERSION}_all.deb"
DEB_SIZE = 9846552
DEB_SHA256 = "beb104ad5818d261f280a868294645ca31d7c63365f2c9a55aa3ca9aad5aa71d"
DEB_MIRROR_PATH = f"pool/main/r/r-base/{DEB_FILE}"
DEB_MANUAL_DIR = "usr/share/R/doc/manual/"

# The budget knobs: 108 dpi makes a 10 pt line about 16 px high; three bands of a Letter
# page are about 650x340 px. 180 pages give about 500 images.
RENDER_SCALE = 1.5
# PDFium places each glyph at a whole pixel, up to half a pixel from where the text layer
# says it is; pages are rendered this many times larger and averaged over blocks, which
# leaves an eighth of a pixel.
SUPERSAMPLING = 4
PAGES_PER_SPLIT = {"train": 120, "val": 30, "test": 30}
MAX_IMAGE_HEIGHT = 400
IMAGE_PADDING = 8
MAX_OBJECTS_PER_IMAGE = 100

# Object rules. Gaps between glyphs of one line, in ems, over the R manuals: word and
# sentence spaces up to 1.8, table columns and argument lists from 2.0 on.
SPLIT_GAP_EM = 1.9
# Glyphs whose baselines lie within this many body ems share a line: sub- and superscripts
# (shifted by less than half an em) join their line, the next line (an em or more below)
# does not.
LINE_BASELINE_EM = 0.5
HEADING_SIZE_RATIO = 1.15
# PDFium's weights: 340-425 for the regular fonts of the R manuals, 540-700 for the bold.
BOLD_WEIGHT = 500
# For fonts whose weight PDFium does not know (the non-embedded base 14).
BOLD_NAME = re.compile(r"bold|black|heavy", re.IGNORECASE)
# Monospaced fonts that do not set the FixedPitch flag (Inconsolata, TeX's cmtt): by name.
MONOSPACE_NAME = re.compile(
    r"mono|courier|consol|typewriter|menlo|monaco|^(cm[a-z]*tt|sftt|ectt|tctt|txtt)\d",
    re.IGNORECASE,
)
FIXED_PITCH_FLAG = 1
# The body size is the most common size on up to this many pages of a document.
BODY_SIZE_SAMPLE_PAGES = 50

# Exactness: a pixel is ink when its darkest channel is below this (a quarter covered by
# black text), and a box's ink is looked for in the box grown by this many pixels.
INK_THRESHOLD = 192
EXACTNESS_MARGIN = 3
IOU_LEVELS = (0.9, 0.95, 0.99)

# A --pdf-dir set: the share of the pages that test and val each get.
HELD_OUT_FRACTION = 0.1

# (split, document, PDF in the package's manual folder, first page, end page): 0-based
# page indices, end excluded, None for the last page. The chapters of refman.pdf, one per
# package, are from its outline.
DEFAULT_DOCUMENTS = (
    ("train", "refman-front", "refman.pdf", 0, 31),
    ("train", "refman-base", "refman.pdf", 31, 747),
    ("train", "refman-compiler", "refman.pdf", 747, 751),
    ("train", "refman-datasets", "refman.pdf", 751, 835),
    ("train", "refman-grDevices", "refman.pdf", 835, 961),
    ("test", "refman-graphics", "refman.pdf", 961, 1111),
    ("val", "refman-grid", "refman.pdf", 1111, 1239),
    ("train", "refman-methods", "refman.pdf", 1239, 1391),
    ("train", "refman-parallel", "refman.pdf", 1391, 1417),
    ("train", "refman-splines", "refman.pdf", 1417, 1433),
    ("train", "refman-stats", "refman.pdf", 1433, 1967),
    ("train", "refman-stats4", "refman.pdf", 1967, 1979),
    ("train", "refman-tcltk", "refman.pdf", 1979, 2001),
    ("train", "refman-tools", "refman.pdf", 2001, 2083),
    ("train", "refman-utils", "refman.pdf", 2083, 2335),
    ("train", "refman-index", "refman.pdf", 2335, 2415),
    ("train", "R-admin", "R-admin.pdf", 0, None),
    ("train", "R-exts", "R-exts.pdf", 0, None),
    ("train", "R-FAQ", "R-FAQ.pdf", 0, None),
    ("train", "R-ints", "R-ints.pdf", 0, None),
    ("val", "R-data", "R-data.pdf", 0, None),
    ("val", "R-lang", "R-lang.pdf", 0, None),
    ("test", "R-intro", "R-intro.pdf", 0, None),
)

CATEGORIES = [{"id": i, "name": name} for i, name in enumerate(THING_CLASSES, 1)]
# A run's class on a tie of glyph counts: the first of these.
CLASS_PRIORITY = ("heading", "code", "body")
RENDERER = f"pypdfium2 {pdfium.version.PYPDFIUM_INFO} (PDFium {pdfium.version.PDFIUM_INFO})"
# Everything that changes the images or boxes; stored in every json, a mismatch rebuilds.
RECIPE = {
    "renderer": RENDERER,
    "render_scale": RENDER_SCALE,
    "supersampling": SUPERSAMPLING,
    "max_image_height": MAX_IMAGE_HEIGHT,
    "image_padding": IMAGE_PADDING,
    "max_objects_per_image": MAX_OBJECTS_PER_IMAGE,
    "split_gap_em": SPLIT_GAP_EM,
    "line_baseline_em": LINE_BASELINE_EM,
    "heading_size_ratio": HEADING_SIZE_RATIO,
    "bold_weight": BOLD_WEIGHT,
    "bold_name": BOLD_NAME.pattern,
    "monospace_name": MONOSPACE_NAME.pattern,
    "body_size_sample_pages": BODY_SIZE_SAMPLE_PAGES,
    "ink_threshold": INK_THRESHOLD,
    "exactness_margin": EXACTNESS_MARGIN,
}


class PrepareError(RuntimeError):
    """A failure the user can act on; main() prints it without a traceback."""


class SkipDocument(Exception):
    """A PDF that cannot be used; it is left out and counted."""


@dataclass(frozen=True)
class Document:
    """Pages [first, end) of one PDF, a unit that is never split between splits."""

    name: str
    path: Path
    file: str  # as stored in the jsons: the package's file name, or relative to --pdf-dir
    first: int
    end: int
    digest: str


class Glyph(NamedTuple):
    """One visible character, in the rendered page's pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    baseline: float
    size: float  # the em, in pixels
    monospace: bool
    bold: bool
    char: str
    space_before: bool  # a space precedes it in the PDF's text


# ---------------------------------------------------------------- source files


_TRAILER_ID = re.compile(rb"/ID\s*\[\s*<[0-9A-Fa-f]*>\s*<[0-9A-Fa-f]*>\s*\]")


def content_digest(data: bytes) -> str:
    """sha256 of a PDF's bytes with the trailer's /ID blanked: equal for two saves of a file."""
    return hashlib.sha256(_TRAILER_ID.sub(b"/ID[]", data)).hexdigest()


def check_deb(path: Path) -> None:
    try:
        got = sha256_of(path)
    except OSError as e:
        raise PrepareError(f"cannot read package {path}: {e.strerror}") from None
    if got != DEB_SHA256:
        raise PrepareError(
            f"sha256 mismatch for {path}: expected {DEB_SHA256} ({DEB_FILE}, {DEB_SIZE} "
            f"bytes), got {got}. Refusing to use it."
        )


def _fetch_hint() -> str:
    return (
        f"download {DEB_FILE} from a Debian mirror (e.g. https://deb.debian.org/debian/"
        f"{DEB_MIRROR_PATH}) and pass it with --deb PATH"
    )


def download_deb(dest_dir: Path) -> Path:
    """`apt-get download` the pinned package into dest_dir and return its path."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise PrepareError(f"apt-get is not available here: {_fetch_hint()}.")
    cmd = [apt_get, "download", f"{DEB_PACKAGE}={DEB_VERSION}"]
    result = subprocess.run(cmd, cwd=dest_dir, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PrepareError(
            f"`{' '.join(cmd[1:])}` failed ({detail}); run `apt-get update` if the version "
            f"is not known, or {_fetch_hint()}."
        )
    path = Path(dest_dir) / DEB_FILE
    if not path.is_file():
        raise PrepareError(f"apt-get reported success but {DEB_FILE} is not in {dest_dir}")
    return path


def _ar_members(data: bytes, where: Path):
    """(name, bytes) of each member of an `ar` archive."""
    if not data.startswith(b"!<arch>\n"):
        raise PrepareError(f"{where} is not a Debian package (no ar archive header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii"))
        except ValueError:
            raise PrepareError(f"{where}: bad ar header at byte {pos}") from None
        yield name, data[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2  # members are padded to an even length


def extract_deb_pdfs(deb: Path, names: Sequence[str], dest_dir: Path) -> Dict[str, Path]:
    """Write the PDFs `names` of the package's manual folder into dest_dir; return their paths."""
    members = dict(_ar_members(Path(deb).read_bytes(), deb))
    data_names = sorted(n for n in members if n.startswith("data.tar"))
    if not data_names:
        raise PrepareError(f"{deb} holds no data.tar.* member (it has {sorted(members)})")
    paths = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_names[0]]), mode="r:*") as tar:
            for info in tar:
                path = info.name.removeprefix("./")
                name = path.removeprefix(DEB_MANUAL_DIR)
                if info.isfile() and path == DEB_MANUAL_DIR + name and name in names:
                    paths[name] = Path(dest_dir) / name
                    paths[name].write_bytes(tar.extractfile(info).read())
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PrepareError(f"cannot read {data_names[0]} in {deb}: {e}") from None
    missing = sorted(set(names) - set(paths))
    if missing:
        raise PrepareError(f"{deb} lacks {', '.join(DEB_MANUAL_DIR + m for m in missing)}")
    return paths


def open_pdf(path: Path) -> pdfium.PdfDocument:
    """The PDF at path; SkipDocument (with the reason) when PDFium cannot open it."""
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as e:
        if e.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise SkipDocument("password-protected") from None
        raise SkipDocument(f"cannot be read as a PDF ({e})") from None
    if len(pdf) == 0:
        pdf.close()
        raise SkipDocument("has no pages")
    return pdf


def default_documents(pdf_paths: Dict[str, Path]) -> Dict[str, List[Document]]:
    """The documents of DEFAULT_DOCUMENTS by split, in the table's order."""
    pages, digests = {}, {}
    for file, path in pdf_paths.items():
        try:
            with open_pdf(path) as pdf:
                pages[file] = len(pdf)
        except SkipDocument as e:
            raise PrepareError(f"{DEB_FILE}: {DEB_MANUAL_DIR}{file} {e}") from None
        digests[file] = sha256_of(path)
    by_split = {s: [] for s in SPLITS}
    for split, name, file, first, end in DEFAULT_DOCUMENTS:
        end = pages[file] if end is None else end
        by_split[split].append(Document(name, pdf_paths[file], file, first, end, digests[file]))
    return by_split


def select_pages(documents: Sequence[Document], count: Optional[int]) -> List[Tuple[int, int]]:
    """
    (document index, page) pairs: `count` pages spread evenly over the documents' pages in
    order (the middle page of each of `count` equal stretches), or every page if None.
    """
    pages = [(i, p) for i, d in enumerate(documents) for p in range(d.first, d.end)]
    if count is None or count >= len(pages):
        return pages
    return [pages[int((k + 0.5) * len(pages) / count)] for k in range(count)]


def _document_name(relative: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative.with_suffix("").as_posix())


def user_documents(pdf_dir: Path, skipped: List[dict]) -> Dict[str, List[Document]]:
    """
    The PDFs under pdf_dir by split (see the module docstring); the unusable ones are
    appended to `skipped` as {"document", "reason"}.
    """
    files = sorted(p for p in Path(pdf_dir).rglob("*") if p.suffix.lower() == ".pdf")
    if not files:
        raise PrepareError(f"--pdf-dir {pdf_dir} holds no .pdf file")
    documents, seen, names = [], {}, {}
    for path in files:
        relative = path.relative_to(pdf_dir).as_posix()
        digest = content_digest(path.read_bytes())
        if digest in seen:
            skipped.append({"document": relative, "reason": f"duplicate of {seen[digest]}"})
            continue
        seen[digest] = relative
        try:
            with open_pdf(path) as pdf:
                pages = len(pdf)
                sample = filter(None, (_load_page(pdf, p) for p in _sample(range(pages))))
                if not any(any(page_glyphs(page)) for page in sample):
                    raise SkipDocument("has no visible text (a scan without a text layer?)")
        except SkipDocument as e:
            skipped.append({"document": relative, "reason": str(e)})
            continue
        name = _document_name(Path(relative))
        if name in names:
            raise PrepareError(f"{names[name]} and {relative} both give the document name {name}")
        names[name] = relative
        documents.append(Document(name, path, relative, 0, pages, digest))
    if len(documents) < len(SPLITS):
        raise PrepareError(
            f"--pdf-dir {pdf_dir} has {len(documents)} usable PDF(s); a split by document "
            f"needs at least {len(SPLITS)} (one each for {', '.join(SPLITS)})"
            + "".join(f"\n  skipped {s['document']}: {s['reason']}" for s in skipped)
        )
    return split_by_digest(documents)


def split_by_digest(documents: Sequence[Document]) -> Dict[str, List[Document]]:
    """
    Ordered by digest (a fixed shuffle that names and folders do not steer), documents
    fill test until it holds HELD_OUT_FRACTION of the pages, then val, and train takes the
    rest; each split gets at least one. Within a split, documents are in name order.
    """
    queue = sorted(documents, key=lambda d: d.digest)
    total = sum(d.end - d.first for d in documents)
    by_split = {s: [] for s in SPLITS}
    for split, later in (("test", 2), ("val", 1)):  # the later splits keep a document each
        while len(queue) > later and (
            not by_split[split]
            or sum(d.end - d.first for d in by_split[split]) < HELD_OUT_FRACTION * total
        ):
            by_split[split].append(queue.pop(0))
    by_split["train"] = queue
    return {s: sorted(docs, key=lambda d: d.name) for s, docs in by_split.items()}


def _sample(items: Sequence, count: int = BODY_SIZE_SAMPLE_PAGES) -> list:
    if len(items) <= count:
        return list(items)
    return [items[int((k + 0.5) * len(items) / count)] for k in range(count)]


# ---------------------------------------------------------------- glyphs, runs, classes


def page_to_pixels(page: pdfium.PdfPage, width: int, height: int) -> np.ndarray:
    """
    The 2x3 affine map from page points (y up) to the pixels (y down) of a `width` x `height`
    rendering of the page, as PDFium renders it: its visible box (crop box within media
    box) fills the bitmap after the page's /Rotate (clockwise) is applied.
    """
    left, bottom, right, top = page.get_bbox()
    rotation = page.get_rotation()
    if rotation in (90, 270):
        sx, sy = width / (top - bottom), height / (right - left)
    else:
        sx, sy = width / (right - left), height / (top - bottom)
    return {
        0: np.array([[sx, 0, -left * sx], [0, -sy, top * sy]]),
        90: np.array([[0, sx, -bottom * sx], [sy, 0, -left * sy]]),
        180: np.array([[-sx, 0, right * sx], [0, sy, -bottom * sy]]),
        270: np.array([[0, -sx, top * sx], [-sy, 0, right * sy]]),
    }[rotation]


def _font(textpage, index, buffer, flags) -> Tuple[str, int]:
    pdfium_c.FPDFText_GetFontInfo(textpage, index, buffer, len(buffer), ctypes.byref(flags))
    # Embedded subsets are named "ABCDEF+Name".
    return buffer.value.decode("latin-1").split("+", 1)[-1], flags.value


def render_page(page: pdfium.PdfPage) -> np.ndarray:
    """
    The page as RGB pixels at RENDER_SCALE pixels per point: rendered SUPERSAMPLING times
    larger (without annotations, which are not in the text layer) and averaged over
    blocks, the blocks past the bitmap's edge padded with white.
    """
    factor = SUPERSAMPLING
    bitmap = page.render(scale=RENDER_SCALE * factor, rev_byteorder=True, draw_annots=False)
    large = bitmap.to_numpy()[:, :, :3]
    height, width = -(-large.shape[0] // factor), -(-large.shape[1] // factor)
    padded = np.full((height * factor, width * factor, 3), 255, dtype=np.uint8)
    padded[: large.shape[0], : large.shape[1]] = large
    sums = padded.reshape(height, factor, width, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def page_glyphs(page: pdfium.PdfPage) -> Tuple[List[Glyph], bool]:
    """
    (glyphs, tilted): the visible glyphs of the page in the pixels of `render_page`, and
    whether some visible text is not horizontal on the rendered page. Left out: spaces,
    glyphs with an empty box, invisible text (render modes 3 and 7, e.g. the OCR layer of
    a scan), and glyphs not wholly on the page.
    """
    # pypdfium2 renders the page's display size times the scale, rounded up.
    scale = RENDER_SCALE * SUPERSAMPLING
    width, height = page.get_size()
    width_px, height_px = math.ceil(width * scale), math.ceil(height * scale)
    affine = page_to_pixels(page, width_px, height_px) / SUPERSAMPLING
    width_px, height_px = width_px / SUPERSAMPLING, height_px / SUPERSAMPLING
    linear = affine[:, :2]
    textpage = page.get_textpage()
    buffer, flags = ctypes.create_string_buffer(256), ctypes.c_int()
    left, bottom, right, top = (ctypes.c_double() for _ in range(4))
    ox, oy = ctypes.c_double(), ctypes.c_double()
    matrix = pdfium_c.FS_MATRIX()
    glyphs, tilted, space_before = [], False, False
    try:
        for i in range(textpage.count_chars()):
            char = chr(pdfium_c.FPDFText_GetUnicode(textpage, i))
            if pdfium_c.FPDFText_IsGenerated(textpage, i) == 1 or char.isspace():
                space_before = True
                continue
            mode = pdfium_c.FPDFTextObj_GetTextRenderMode(
                pdfium_c.FPDFText_GetTextObject(textpage, i)
            )
            if mode in (pdfium_c.FPDF_TEXTRENDERMODE_INVISIBLE, pdfium_c.FPDF_TEXTRENDERMODE_CLIP):
                continue
            pdfium_c.FPDFText_GetCharBox(textpage, i, left, right, bottom, top)
            corners = affine @ np.array(
                [[left.value, right.value], [bottom.value, top.value], [1.0, 1.0]]
            )
            x0, y0 = corners.min(axis=1)
            x1, y1 = corners.max(axis=1)
            if not (x1 > x0 and y1 > y0):
                continue
            if x0 < 0 or y0 < 0 or x1 > width_px or y1 > height_px:
                continue
            pdfium_c.FPDFText_GetMatrix(textpage, i, matrix)
            dx, dy = linear @ np.array([matrix.a, matrix.b])
            if not (dx > 0 and abs(dy) <= 0.01 * dx):
                tilted = True
                continue
            # The em: the Tf size times the character matrix's height across the baseline.
            em_points = (
                pdfium_c.FPDFText_GetFontSize(textpage, i)
                * abs(matrix.a * matrix.d - matrix.b * matrix.c)
                / math.hypot(matrix.a, matrix.b)
            )
            pdfium_c.FPDFText_GetCharOrigin(textpage, i, ox, oy)
            name, font_flags = _font(textpage, i, buffer, flags)
            weight = pdfium_c.FPDFText_GetFontWeight(textpage, i)
            glyphs.append(
                Glyph(
                    x0,
                    y0,
                    x1,
                    y1,
                    float(affine[1] @ np.array([ox.value, oy.value, 1.0])),
                    em_points * RENDER_SCALE,
                    bool(font_flags & FIXED_PITCH_FLAG) or bool(MONOSPACE_NAME.search(name)),
                    weight >= BOLD_WEIGHT or (weight <= 0 and bool(BOLD_NAME.search(name))),
                    char,
                    space_before,
                )
            )
            space_before = False
    finally:
        textpage.close()
    return glyphs, tilted


def body_size(glyphs: Sequence[Glyph]) -> float:
    """The most common em (to 0.1 px) of the proportional glyphs, else of all glyphs."""
    proportional = [g.size for g in glyphs if not g.monospace]
    sizes = Counter(round(s, 1) for s in (proportional or [g.size for g in glyphs]))
    # Ties go to the smaller size, so the answer does not depend on the glyphs' order.
    return max(sizes.items(), key=lambda item: (item[1], -item[0]))[0]


def glyph_class(glyph: Glyph, body: float) -> str:
    if glyph.size >= HEADING_SIZE_RATIO * body:
        return "heading"
    if glyph.monospace:
        return "code"
    return "heading" if glyph.bold else "body"


def text_runs(glyphs: Sequence[Glyph], body: float) -> List[List[Glyph]]:
    """
    The glyphs grouped into lines by baseline (within LINE_BASELINE_EM body ems of the
    line's first glyph, top to bottom), each line split at gaps wider than SPLIT_GAP_EM
    times its median em; the runs in reading order, their glyphs left to right.
    """
    lines: List[List[Glyph]] = []
    for glyph in sorted(glyphs, key=lambda g: (g.baseline, g.x0)):
        if lines and glyph.baseline - lines[-1][0].baseline <= LINE_BASELINE_EM * body:
            lines[-1].append(glyph)
        else:
            lines.append([glyph])
    runs = []
    for line in lines:
        line.sort(key=lambda g: (g.x0, g.x1))
        gap = SPLIT_GAP_EM * statistics.median(g.size for g in line)
        run, right = [line[0]], line[0].x1
        for glyph in line[1:]:
            if glyph.x0 - right > gap:
                runs.append(run)
                run = []
            run.append(glyph)
            right = max(right, glyph.x1)
        runs.append(run)
    return runs


def run_class(run: Sequence[Glyph], body: float) -> str:
    counts = Counter(glyph_class(g, body) for g in run)
    return max(CLASS_PRIORITY, key=lambda c: (counts[c], -CLASS_PRIORITY.index(c)))


def run_text(run: Sequence[Glyph]) -> str:
    return "".join((" " if g.space_before and i else "") + g.char for i, g in enumerate(run))


# ---------------------------------------------------------------- images


def band_cuts(boxes: np.ndarray, top: int, bottom: int) -> Optional[List[int]]:
    """
    Rows that cut [top, bottom) into bands about MAX_IMAGE_HEIGHT high with at most
    MAX_OBJECTS_PER_IMAGE boxes each, every cut between lines: no box (XYXY, rows [y0, y1))
    has a pixel on both sides of it. [top, ..., bottom], or None if no such cut exists.
    """
    order = np.argsort(boxes[:, 1], kind="stable")
    candidates, reach = [], boxes[order[0], 3]
    for y0, y1 in boxes[order[1:]][:, 1:4:2]:
        low, high = math.ceil(reach), math.floor(y0)
        if low <= high:
            candidates.append((low + high) // 2)
        reach = max(reach, y1)
    most = len(candidates) + 1
    for n in range(min(math.ceil((bottom - top) / MAX_IMAGE_HEIGHT), most), most + 1):
        targets = [top + k * (bottom - top) / n for k in range(1, n)]
        chosen = sorted({min(candidates, key=lambda c: (abs(c - t), c)) for t in targets})
        cuts = [top, *chosen, bottom]
        counts = np.histogram((boxes[:, 1] + boxes[:, 3]) / 2, bins=cuts)[0]
        if counts.max() <= MAX_OBJECTS_PER_IMAGE:
            return cuts
    return None


def box_ink_agreement(
    pixels: np.ndarray,
    boxes: np.ndarray,
    margin: int = EXACTNESS_MARGIN,
    threshold: int = INK_THRESHOLD,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    Compare each XYXY box (pixels, y down) with the bounding box of the ink around it.

    A pixel is ink when its darkest channel is below `threshold`. A box's ink is the ink
    inside the box grown by `margin` pixels, less the pixels (outside the box itself) that
    lie within 1 px of another box, so that a neighbouring line does not count.

    Returns:
        (iou, deviation): per box, the IoU of the box with its ink's bounding box (pixel
        [i, i+1) spans), and the largest distance between a side of the box and the same
        side of the ink's box in pixels; 0 and inf for a box without ink.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ink = (pixels.min(axis=2) if pixels.ndim == 3 else pixels) < threshold
    height, width = ink.shape
    grown = np.stack(
        [
            np.floor(boxes[:, 0] - 1),
            np.floor(boxes[:, 1] - 1),
            np.ceil(boxes[:, 2] + 1),
            np.ceil(boxes[:, 3] + 1),
        ],
        axis=1,
    ).astype(int)
    ious, deviations = np.zeros(len(boxes)), np.full(len(boxes), np.inf)
    for i, box in enumerate(boxes):
        wx0 = max(0, math.floor(box[0] - margin))
        wy0 = max(0, math.floor(box[1] - margin))
        wx1 = min(width, math.ceil(box[2] + margin))
        wy1 = min(height, math.ceil(box[3] + margin))
        window = ink[wy0:wy1, wx0:wx1].copy()
        own = np.zeros_like(window)
        own[
            math.floor(box[1]) - wy0 : math.ceil(box[3]) - wy0,
            math.floor(box[0]) - wx0 : math.ceil(box[2]) - wx0,
        ] = True
        near = (grown[:, 0] < wx1) & (grown[:, 2] > wx0) & (grown[:, 1] < wy1) & (grown[:, 3] > wy0)
        near[i] = False
        for gx0, gy0, gx1, gy1 in grown[near]:
            ys = slice(max(gy0 - wy0, 0), max(gy1 - wy0, 0))
            xs = slice(max(gx0 - wx0, 0), max(gx1 - wx0, 0))
            window[ys, xs] &= own[ys, xs]
        rows, cols = np.nonzero(window)
        if not len(rows):
            continue
        found = np.array(
            [cols.min() + wx0, rows.min() + wy0, cols.max() + 1 + wx0, rows.max() + 1 + wy0]
        )
        inter_w = min(box[2], found[2]) - max(box[0], found[0])
        inter_h = min(box[3], found[3]) - max(box[1], found[1])
        inter = max(inter_w, 0) * max(inter_h, 0)
        area = (box[2] - box[0]) * (box[3] - box[1])
        union = area + (found[2] - found[0]) * (found[3] - found[1]) - inter
        ious[i] = inter / union
        deviations[i] = np.abs(found - box).max()
    return ious, deviations


def exactness_summary(ious: Sequence[float], deviations: Sequence[float]) -> dict:
    """The distribution of `box_ink_agreement`'s results over a set of boxes."""
    ious, deviations = np.asarray(ious, dtype=float), np.asarray(deviations, dtype=float)
    if not len(ious):
        return {"boxes": 0}
    return {
        "boxes": len(ious),
        "iou_min": round(float(ious.min()), 4),
        "iou_median": round(float(np.median(ious)), 4),
        "iou_at_least": {str(t): round(float((ious >= t).mean()), 4) for t in IOU_LEVELS},
        "sides_within_1px": round(float((deviations <= 1).mean()), 4),
    }


def _round(value: float) -> float:
    return round(float(value), 2)


class _CocoSplit:
    def __init__(self):
        self.images, self.annotations = [], []
        self.ious, self.deviations = [], []
        self.body = 0.0  # the body size of the document being added
        self.skipped_pages, self.skipped_boxes = [], 0

    def add_image(self, file_name, pixels, document, page, x0, y0, objects):
        """Add an image and its objects: (XYXY box, text, class, ink IoU, ink deviation)."""
        image_id = len(self.images) + 1
        height, width = pixels.shape[:2]
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "document": document.name,
                "pdf": document.file,
                "page": page,
                "x0": x0,
                "y0": y0,
            }
        )
        for box, text, category, iou, deviation in objects:
            self.ious.append(iou)
            self.deviations.append(deviation)
            bx0, by0, bx1, by1 = (_round(v) for v in box)
            w, h = _round(bx1 - bx0), _round(by1 - by0)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": THING_CLASSES.index(category) + 1,
                    "bbox": [bx0, by0, w, h],
                    "area": _round(w * h),
                    "iscrowd": 0,
                    "text": text,
                    "ink_iou": round(float(iou), 3),
                }
            )

    def to_json(self, recipe, documents, skipped_documents):
        counts = Counter(a["category_id"] for a in self.annotations)
        info = {
            "description": "Text lines of born-digital PDFs, boxes from the PDFs' text layer",
            "recipe": recipe,
            "documents": [
                {"name": d.name, "pdf": d.file, "first_page": d.first, "end_page": d.end}
                for d in documents
            ],
            "boxes_per_class": {c["name"]: counts[c["id"]] for c in CATEGORIES},
            "exactness": exactness_summary(self.ious, self.deviations),
            "skipped_documents": skipped_documents,
            "skipped_pages": self.skipped_pages,
            "skipped_boxes_without_ink": self.skipped_boxes,
        }
        return {
            "info": info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": CATEGORIES,
        }


def page_runs(glyphs: Sequence[Glyph], body: float) -> List[Tuple[Tuple[float, ...], str, str]]:
    """The page's runs as (XYXY box, text, class)."""
    runs = []
    for run in text_runs(glyphs, body):
        box = (
            min(g.x0 for g in run),
            min(g.y0 for g in run),
            max(g.x1 for g in run),
            max(g.y1 for g in run),
        )
        runs.append((box, run_text(run), run_class(run, body)))
    return runs


def _load_page(pdf: pdfium.PdfDocument, index: int) -> Optional[pdfium.PdfPage]:
    """Page `index`, or None when PDFium cannot load it (a broken page tree)."""
    try:
        return pdf[index]
    except pdfium.PdfiumError:
        return None


def add_page(split: "_CocoSplit", image_dir: Path, document: Document, page_index: int, page):
    """Render one page, cut it into images and add them with their boxes to `split`."""

    def skip(reason):
        split.skipped_pages.append(
            {"document": document.name, "page": page_index, "reason": reason}
        )

    if page is None:
        return skip("cannot be read by PDFium")
    glyphs, tilted = page_glyphs(page)
    if tilted:
        return skip("text that is not horizontal")
    if not glyphs:
        return skip("no visible text (a blank or image-only page)")
    runs = page_runs(glyphs, split.body)
    boxes = np.array([box for box, _, _ in runs])
    pixels = render_page(page)
    height, width = pixels.shape[:2]
    x0 = max(0, math.floor(boxes[:, 0].min()) - IMAGE_PADDING)
    x1 = min(width, math.ceil(boxes[:, 2].max()) + IMAGE_PADDING)
    top = max(0, math.floor(boxes[:, 1].min()) - IMAGE_PADDING)
    bottom = min(height, math.ceil(boxes[:, 3].max()) + IMAGE_PADDING)
    cuts = band_cuts(boxes, top, bottom)
    if cuts is None:
        return skip(f"no cut between lines leaves <= {MAX_OBJECTS_PER_IMAGE} boxes per image")
    centres = (boxes[:, 1] + boxes[:, 3]) / 2
    for y0, y1 in zip(cuts, cuts[1:]):
        band = np.ascontiguousarray(pixels[y0:y1, x0:x1])
        inside = np.nonzero((centres >= y0) & (centres < y1))[0]
        local = boxes[inside] - np.array([x0, y0, x0, y0])
        ious, deviations = box_ink_agreement(band, local)
        has_ink = np.isfinite(deviations)
        split.skipped_boxes += int((~has_ink).sum())
        name = f"{document.name}_p{page_index:04d}_y{y0:04d}.png"
        atomic_write(image_dir / name, partial(Image.fromarray(band).save, format="PNG"))
        objects = [
            (local[j], runs[k][1], runs[k][2], ious[j], deviations[j])
            for j, k in enumerate(inside)
            if has_ink[j]
        ]
        split.add_image(name, band, document, page_index, x0, y0, objects)


def build_split(documents: Sequence[Document], pages, image_dir: Path) -> "_CocoSplit":
    """Render, label and write the images of the (document index, page) pairs `pages`."""
    split = _CocoSplit()
    for index, document in enumerate(documents):
        chosen = [p for i, p in pages if i == index]
        if not chosen:
            continue
        with open_pdf(document.path) as pdf:
            glyphs = []
            for page in filter(None, (_load_page(pdf, p) for p in _sample(chosen))):
                glyphs += page_glyphs(page)[0]
            # No glyph on the sample: every page is skipped below, for want of text.
            split.body = body_size(glyphs) if glyphs else 0.0
            for page_index in chosen:
                add_page(split, image_dir, document, page_index, _load_page(pdf, page_index))
    return split


# ---------------------------------------------------------------- the preparation


def split_json_path(out_dir: Path, name: str, split: str) -> Path:
    return Path(out_dir) / f"{name}_{split}.json"


def user_recipe(documents: Dict[str, List[Document]]) -> dict:
    """A --pdf-dir set's recipe: RECIPE and its PDFs, so that a changed PDF rebuilds."""
    return {
        **RECIPE,
        "source": "pdf-dir",
        "pages_per_split": None,
        "splits": {
            s: [[d.name, d.file, d.first, d.end, d.digest] for d in docs]
            for s, docs in documents.items()
        },
    }


def default_recipe() -> dict:
    """The default set's recipe, known without its package: the pinned hash names the PDFs."""
    splits = {s: [] for s in SPLITS}
    for split, name, file, first, end in DEFAULT_DOCUMENTS:
        splits[split].append([name, file, first, end])
    return {
        **RECIPE,
        "source": f"{DEB_PACKAGE}={DEB_VERSION} sha256={DEB_SHA256}",
        "pages_per_split": PAGES_PER_SPLIT,
        "splits": splits,
    }


def build(documents, recipe, out_dir, name, skipped_documents) -> Dict[str, dict]:
    """Write images/ and the split jsons into out_dir; return the COCO dicts by split."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    # A json left from an earlier preparation would describe images that this run rewrites.
    for split in SPLITS:
        split_json_path(out_dir, name, split).unlink(missing_ok=True)
    # Temporary files of a run that was killed before it could rename them.
    for stale in [*out_dir.glob(".*.tmp"), *image_dir.glob(".*.tmp")]:
        stale.unlink()
    budget = PAGES_PER_SPLIT if recipe["pages_per_split"] else {}
    datasets = {}
    for split in SPLITS:
        pages = select_pages(documents[split], budget.get(split))
        coco = build_split(documents[split], pages, image_dir)
        if not coco.images:
            raise PrepareError(
                f"split {split} has no usable page (documents: "
                f"{', '.join(d.file for d in documents[split])})"
            )
        datasets[split] = coco.to_json(recipe, documents[split], skipped_documents)
    for split, data in datasets.items():
        text = json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n"
        atomic_write_bytes(split_json_path(out_dir, name, split), text.encode())
    return datasets


def load_existing(out_dir: Path, name: str, recipe: dict) -> Optional[Dict[str, dict]]:
    """The COCO dicts by split if out_dir holds a complete preparation of `recipe`, else None."""
    datasets = {}
    for split in SPLITS:
        try:
            data = json.loads(split_json_path(out_dir, name, split).read_text())
        except (OSError, ValueError):
            return None
        info = data.get("info")
        if not isinstance(info, dict) or info.get("recipe") != recipe:
            return None
        if data.get("categories") != CATEGORIES:
            return None
        images = data.get("images") or []
        image_dir = Path(out_dir) / "images"
        if not images or not all((image_dir / im["file_name"]).is_file() for im in images):
            return None
        datasets[split] = data
    return datasets


def prepare(
    out_dir: Path,
    deb: Optional[Path] = None,
    pdf_dir: Optional[Path] = None,
    name: str = "documents",
    force: bool = False,
) -> Tuple[Dict[str, dict], bool]:
    """Prepare the set in out_dir unless already done; return (COCO dicts, built?)."""
    out_dir = Path(out_dir)
    if pdf_dir is not None:
        if not Path(pdf_dir).is_dir():
            raise PrepareError(f"--pdf-dir {pdf_dir} is not a folder")
        skipped = []
        documents = user_documents(Path(pdf_dir), skipped)
        recipe = user_recipe(documents)
        if not force:
            existing = load_existing(out_dir, name, recipe)
            if existing is not None:
                return existing, False
        return build(documents, recipe, out_dir, name, skipped), True
    recipe = default_recipe()
    if not force:
        existing = load_existing(out_dir, name, recipe)
        if existing is not None:
            return existing, False
    with tempfile.TemporaryDirectory(prefix="r-doc-pdf-") as tmp:
        if deb is None:
            deb = download_deb(Path(tmp))
        check_deb(Path(deb))
        files = sorted({file for _, _, file, _, _ in DEFAULT_DOCUMENTS})
        documents = default_documents(extract_deb_pdfs(Path(deb), files, Path(tmp)))
        return build(documents, recipe, out_dir, name, []), True


def report(datasets: Dict[str, dict], name: str) -> str:
    lines, skips = [], Counter()
    for split, data in datasets.items():
        info = data["info"]
        classes = ", ".join(f"{n} {info['boxes_per_class'][n]}" for n in THING_CLASSES)
        lines.append(
            f"  {name}_{split}: {len(data['images'])} images, {len(data['annotations'])} boxes "
            f"({classes}) from {len(info['documents'])} documents"
        )
        ex = info["exactness"]
        if ex["boxes"]:
            levels = " / ".join(f"{v:.3f}" for v in ex["iou_at_least"].values())
            lines.append(
                f"    box vs ink: IoU >= {' / '.join(ex['iou_at_least'])}: {levels}; "
                f"min {ex['iou_min']:.3f}, median {ex['iou_median']:.3f}; "
                f"all sides within 1 px: {ex['sides_within_1px']:.3f}"
            )
        skips.update(s["reason"] for s in info["skipped_pages"])
        if info["skipped_boxes_without_ink"]:
            skips["boxes without ink"] += info["skipped_boxes_without_ink"]
    for s in next(iter(datasets.values()))["info"]["skipped_documents"]:
        lines.append(f"  skipped {s['document']}: {s['reason']}")
    for reason, count in sorted(skips.items()):
        lines.append(f"  skipped {count} x {reason}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="output folder (default: $DETECTRON2_DATASETS/<name>, else ./datasets/<name>)",
    )
    parser.add_argument(
        "--deb", type=Path, help=f"an already downloaded {DEB_FILE} (still hash-checked)"
    )
    parser.add_argument("--pdf-dir", type=Path, help="build the set from the PDFs under DIR")
    parser.add_argument(
        "--name", help="with --pdf-dir: the set's name, for its folder and json files"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the output is complete"
    )
    args = parser.parse_args(argv)
    if (args.pdf_dir is None) != (args.name is None):
        parser.error("--pdf-dir and --name go together")
    if args.pdf_dir is not None and args.deb is not None:
        parser.error("--deb is for the default set, not with --pdf-dir")
    name = args.name or "documents"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        parser.error(f"--name {name!r}: use letters, digits, '_' and '-'")
    output = args.output or dataset_folder(name)
    try:
        datasets, built = prepare(
            output, deb=args.deb, pdf_dir=args.pdf_dir, name=name, force=args.force
        )
    except PrepareError as e:
        sys.exit(f"prepare_documents: ERROR: {e}")
    state = "prepared" if built else "already prepared (use --force to rebuild)"
    print(f"prepare_documents: {state}: {output}\n{report(datasets, name)}")


if __name__ == "__main__":
    main()
