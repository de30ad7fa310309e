"""
Tests of scripts/prepare_documents.py.

PDFs are made here: matplotlib writes pages with text in a serif, a bold sans and a
monospaced font (TrueType, as most PDF producers embed it), and bad PDFs (corrupt bytes,
an RC4-encrypted file, a scan) are made by hand. A set prepared from them with --pdf-dir is
checked against the rendered ink, measured here independently of the script. The default
set needs the ~10 MB Debian package, so only its parts are tested: the .deb unpacking on a
tiny package built here, and the hash check.
"""

import hashlib
import io
import json
import shutil
import struct
import tarfile

import matplotlib
import numpy as np
import pypdfium2 as pdfium
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from projects.cascade.data.datasets import documents
from tests.helpers import load_script

prep = load_script("scripts/prepare_documents.py")

# Independent of the script's constants: a pixel is ink when its darkest channel is below
# this, and a box's ink is looked for within this many pixels around it.
INK_BELOW = 192
MARGIN = 3

SERIF, SANS, MONO = "DejaVu Serif", "DejaVu Sans", "DejaVu Sans Mono"
# (x, y in figure fractions, text, points, family, weight, expected class); the first two
# share a baseline far apart, so they are two runs.
PAGE_TEXT = [
    (0.05, 0.90, "Alpha Large Heading", 18, SANS, "bold", "heading"),
    (0.05, 0.78, "Bold words at body size", 10, SANS, "bold", "heading"),
    (0.05, 0.68, "Plain body text in a serif font.", 10, SERIF, "normal", "body"),
    (0.05, 0.60, "More body text makes ten points the body size.", 10, SERIF, "normal", "body"),
    (0.05, 0.50, "x <- c(1, 2, 3)", 10, MONO, "normal", "code"),
    (0.62, 0.50, "a far column", 10, SERIF, "normal", "body"),
    (0.05, 0.40, "Yet another body line, in the serif.", 10, SERIF, "normal", "body"),
]
# Runs of two fonts on one line: (pieces of (text, family)), expected class by majority.
MIXED_TEXT = [
    (0.05, 0.30, (("call the function ", SERIF), ("lm", MONO)), "body"),
    (0.05, 0.20, (("print(summary(fit))", MONO), (" now", SERIF)), "code"),
]


def _figure(title):
    fig = Figure(figsize=(6, 4))
    for x, y, text, size, family, weight, _ in PAGE_TEXT:
        fig.text(x, y, text.replace("Alpha", title), fontsize=size, family=family, weight=weight)
    renderer = FigureCanvasAgg(fig).get_renderer()
    for x, y, pieces, _ in MIXED_TEXT:
        for text, family in pieces:
            artist = fig.text(x, y, text, fontsize=10, family=family)
            # The next piece starts where this one ends (a space's width later).
            x = fig.transFigure.inverted().transform(artist.get_window_extent(renderer))[1, 0]
    return fig


def expected_classes(title):
    """{text without spaces: class} of a page made by `_figure(title)`."""
    expected = {t.replace("Alpha", title): c for _, _, t, _, _, _, c in PAGE_TEXT}
    expected.update({"".join(t for t, _ in pieces): c for _, _, pieces, c in MIXED_TEXT})
    return {k.replace(" ", ""): v for k, v in expected.items()}


def _save(path, figures):
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        # No creation date: the same figures give the same bytes.
        with PdfPages(path, metadata={"CreationDate": None}) as pdf:
            for fig in figures:
                pdf.savefig(fig)


def _image_only_figure(seed):
    fig = Figure(figsize=(6, 4))
    fig.figimage(np.random.RandomState(seed).rand(80, 120), cmap="gray")
    return fig


def _rotated_text_figure():
    fig = Figure(figsize=(6, 4))
    fig.text(0.1, 0.8, "A line of body text.", fontsize=10, family=SERIF)
    fig.text(0.5, 0.2, "turned on its side", fontsize=10, family=SERIF, rotation=90)
    return fig


def _white_text_figure(title):
    fig = _figure(title)
    fig.text(0.6, 0.05, "white on white", fontsize=10, family=SERIF, color="white")
    return fig


# ------------------------------------------------------------ hand-made PDFs


def minimal_pdf(content, encrypt=None, file_id=b"0123456789abcdef"):
    """A one-page PDF drawing `content` with Helvetica; `encrypt` is an /Encrypt dictionary."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    if encrypt is not None:
        objects.append(encrypt)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = b"/Size %d /Root 1 0 R /ID [<%s> <%s>]" % (
        len(objects) + 1,
        file_id.hex().encode(),
        file_id.hex().encode(),
    )
    if encrypt is not None:
        trailer += b" /Encrypt %d 0 R" % len(objects)
    out += b"trailer\n<< " + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _rc4(key, data):
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


_PASSWORD_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def encrypted_pdf(user_password=b"secret", owner_password=b"owner"):
    """A PDF encrypted with the standard security handler, revision 2 (40-bit RC4)."""
    file_id, permissions = b"0123456789abcdef", -44
    padded_user = (user_password + _PASSWORD_PAD)[:32]
    owner_key = hashlib.md5((owner_password + _PASSWORD_PAD)[:32]).digest()[:5]
    o_entry = _rc4(owner_key, padded_user)
    key = hashlib.md5(padded_user + o_entry + struct.pack("<i", permissions) + file_id)
    key = key.digest()[:5]
    u_entry = _rc4(key, _PASSWORD_PAD)
    # The content stream is object 5: its key mixes in the object and generation numbers.
    stream_key = hashlib.md5(key + (5).to_bytes(3, "little") + (0).to_bytes(2, "little"))
    content = _rc4(stream_key.digest()[:10], b"BT /F1 24 Tf 20 100 Td (Hello) Tj ET")
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (
        o_entry.hex().encode(),
        u_entry.hex().encode(),
        permissions,
    )
    return minimal_pdf(content, encrypt, file_id)


# ------------------------------------------------------------ the prepared set


@pytest.fixture(scope="module")
def pdf_dir(tmp_path_factory):
    """Three usable PDFs (with a blank, an image-only and a turned page) and four bad ones."""
    folder = tmp_path_factory.mktemp("pdfs")
    _save(folder / "alpha.pdf", [_figure("Alpha"), Figure(figsize=(6, 4))])
    _save(folder / "beta.pdf", [_figure("Beta"), _image_only_figure(1), _rotated_text_figure()])
    (folder / "more").mkdir()
    _save(folder / "more" / "gamma.pdf", [_white_text_figure("Gamma")])
    shutil.copy(folder / "more" / "gamma.pdf", folder / "z-copy.pdf")
    _save(folder / "scan.pdf", [_image_only_figure(2)])
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    (folder / "locked.pdf").write_bytes(encrypted_pdf())
    return folder


@pytest.fixture(scope="module")
def prepared(pdf_dir, tmp_path_factory):
    """(datasets root, COCO dicts by split) of a set named 'documents' made from pdf_dir."""
    root = tmp_path_factory.mktemp("datasets")
    datasets, built = prep.prepare(root / "documents", pdf_dir=pdf_dir, name="documents")
    assert built
    return root, datasets


def _ink_box(pixels, box):
    """The [x0, y0, x1, y1) bounding box of the ink within MARGIN px of box, or None."""
    x0, y0, x1, y1 = box
    wx0, wy0 = max(int(np.floor(x0)) - MARGIN, 0), max(int(np.floor(y0)) - MARGIN, 0)
    wx1, wy1 = int(np.ceil(x1)) + MARGIN, int(np.ceil(y1)) + MARGIN
    rows, cols = np.nonzero(pixels[wy0:wy1, wx0:wx1].min(axis=2) < INK_BELOW)
    if not len(rows):
        return None
    return np.array(
        [cols.min() + wx0, rows.min() + wy0, cols.max() + 1 + wx0, rows.max() + 1 + wy0]
    )


def _objects(root, datasets):
    """(image file, XYXY box, text without spaces, class name, pixels) of every annotation."""
    for data in datasets.values():
        pixels = {
            im["id"]: np.asarray(Image.open(root / "documents" / "images" / im["file_name"]))
            for im in data["images"]
        }
        files = {im["id"]: im["file_name"] for im in data["images"]}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            category = documents.THING_CLASSES[a["category_id"] - 1]
            text = a["text"].replace(" ", "")
            yield files[a["image_id"]], (x, y, x + w, y + h), text, category, pixels[a["image_id"]]


def test_every_box_meets_its_ink_within_a_pixel_and_has_its_class(prepared):
    root, datasets = prepared
    expected = {}
    for title in ("Alpha", "Beta", "Gamma"):
        expected.update(expected_classes(title))
    lines = [text for title in ("Alpha", "Beta", "Gamma") for text in expected_classes(title)]
    found = []
    for file_name, box, text, category, pixels in _objects(root, datasets):
        ink = _ink_box(pixels, box)
        assert ink is not None, (file_name, text)
        assert np.abs(ink - np.array(box)).max() <= 1.0, (file_name, text, box, ink)
        assert expected.get(text) == category, (file_name, text, category)
        found.append(text)
    # Each line once (the turned page and the white text are not labelled).
    assert sorted(found) == sorted(lines)


def test_splits_go_by_document_and_hold_no_absolute_path(prepared, pdf_dir):
    root, datasets = prepared
    owners = {}
    for split, data in datasets.items():
        for im in data["images"]:
            assert owners.setdefault(im["pdf"], split) == split, im["pdf"]
        text = (root / "documents" / f"documents_{split}.json").read_text()
        assert str(pdf_dir) not in text and str(root) not in text
    assert sorted(owners) == ["alpha.pdf", "beta.pdf", "more/gamma.pdf"]
    assert sorted(owners.values()) == ["test", "train", "val"]


def test_bad_input_is_skipped_and_counted(prepared, pdf_dir, capsys):
    _, datasets = prepared
    for data in datasets.values():
        info = data["info"]
        skipped = {s["document"]: s["reason"] for s in info["skipped_documents"]}
        assert skipped.keys() == {"corrupt.pdf", "z-copy.pdf", "locked.pdf", "scan.pdf"}
        assert skipped["corrupt.pdf"].startswith("cannot be read as a PDF")
        assert skipped["locked.pdf"] == "password-protected"
        assert skipped["scan.pdf"].startswith("has no visible text")
        assert skipped["z-copy.pdf"] == "duplicate of more/gamma.pdf"
    pages = {
        (s["document"], s["page"]): s["reason"]
        for data in datasets.values()
        for s in data["info"]["skipped_pages"]
    }
    assert pages == {
        ("alpha", 1): "no visible text (a blank or image-only page)",
        ("beta", 1): "no visible text (a blank or image-only page)",
        ("beta", 2): "text that is not horizontal",
    }
    assert sum(d["info"]["skipped_boxes_without_ink"] for d in datasets.values()) == 1
    prep.main(["--pdf-dir", str(pdf_dir), "--name", "documents", "--output", str(prepared[0])])
    out = capsys.readouterr().out
    assert "skipped locked.pdf: password-protected" in out
    assert "skipped 2 x no visible text" in out and "skipped 1 x boxes without ink" in out


def test_the_encrypted_pdf_is_a_real_one():
    data = encrypted_pdf()
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(data)
    textpage = pdfium.PdfDocument(data, password="secret")[0].get_textpage()
    assert textpage.get_text_range() == "Hello"


def test_images_hold_at_most_100_boxes_and_boxes_stay_inside(prepared):
    _, datasets = prepared
    for data in datasets.values():
        images = {im["id"]: im for im in data["images"]}
        per_image = np.bincount([a["image_id"] for a in data["annotations"]])
        assert per_image.max() <= prep.MAX_OBJECTS_PER_IMAGE
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            im = images[a["image_id"]]
            assert 0 <= x and x + w <= im["width"] and 0 <= y and y + h <= im["height"]


def test_a_second_run_is_not_a_rebuild_and_force_gives_the_same_bytes(prepared, pdf_dir, capsys):
    root, datasets = prepared
    folder = root / "documents"
    before = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    again, built = prep.prepare(folder, pdf_dir=pdf_dir, name="documents")
    assert not built and again == datasets
    prep.main(["--pdf-dir", str(pdf_dir), "--name", "documents", "--output", str(folder)])
    assert "already prepared" in capsys.readouterr().out
    _, built = prep.prepare(folder, pdf_dir=pdf_dir, name="documents", force=True)
    assert built
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == before


def test_an_interrupted_or_changed_preparation_is_rebuilt(prepared, pdf_dir, tmp_path):
    root, datasets = prepared
    folder = tmp_path / "documents"
    shutil.copytree(root / "documents", folder)
    before = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    # A run killed before its last json: temporary files left, one json missing.
    (folder / ".documents_test.json.abc.tmp").write_bytes(b"{")
    (folder / "images" / ".alpha_p0000_y0000.png.abc.tmp").write_bytes(b"")
    (folder / "documents_test.json").unlink()
    _, built = prep.prepare(folder, pdf_dir=pdf_dir, name="documents")
    assert built
    assert not list(folder.rglob("*.tmp"))
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == before
    # A missing image.
    (folder / "images" / datasets["val"]["images"][0]["file_name"]).unlink()
    assert prep.prepare(folder, pdf_dir=pdf_dir, name="documents")[1]
    # A json of another recipe.
    data = json.loads((folder / "documents_val.json").read_text())
    data["info"]["recipe"]["split_gap_em"] = 3.0
    (folder / "documents_val.json").write_text(json.dumps(data))
    assert prep.prepare(folder, pdf_dir=pdf_dir, name="documents")[1]


def test_a_failed_rebuild_leaves_no_json(prepared, pdf_dir, tmp_path, monkeypatch):
    """The jsons go before the first image is written: none describes half-rewritten images."""
    root, _ = prepared
    folder = tmp_path / "documents"
    shutil.copytree(root / "documents", folder)

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "build_split", fail)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(folder, pdf_dir=pdf_dir, name="documents", force=True)
    assert not list(folder.glob("*.json"))


def test_registration_loads_a_split_through_the_catalog(prepared):
    root, datasets = prepared
    names = documents.register_documents(root, name_suffix="_pytest")
    try:
        assert names == ["documents_train_pytest", "documents_val_pytest", "documents_test_pytest"]
        for name, split in zip(names, documents.SPLITS):
            dicts = DatasetCatalog.get(name)
            assert len(dicts) == len(datasets[split]["images"])
            annotations = [a for d in dicts for a in d["annotations"]]
            assert len(annotations) == len(datasets[split]["annotations"])
            assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in annotations)
            assert {a["category_id"] for a in annotations} <= {0, 1, 2}
            assert MetadataCatalog.get(name).thing_classes == ["body", "heading", "code"]
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_too_few_usable_pdfs_is_a_clear_error(pdf_dir, tmp_path):
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for name in ("alpha.pdf", "beta.pdf", "locked.pdf"):
        shutil.copy(pdf_dir / name, folder)
    with pytest.raises(prep.PrepareError, match="has 2 usable PDF") as err:
        prep.prepare(tmp_path / "out", pdf_dir=folder, name="few")
    assert "skipped locked.pdf: password-protected" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no .pdf file"):
        prep.main(["--pdf-dir", str(tmp_path / "empty"), "--name", "x", "--output", str(tmp_path)])


def test_a_page_pdfium_cannot_load_is_skipped(tmp_path):
    """The page tree lists a second page that is no page object."""
    pdf = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Hi there) Tj ET")
    path = tmp_path / "broken.pdf"
    path.write_bytes(pdf.replace(b"/Kids [3 0 R] /Count 1", b"/Kids [3 0 R 9 0 R] /Count 2"))
    document = prep.Document("broken", path, "broken.pdf", 0, 2, "")
    split = prep.build_split([document], [(0, 0), (0, 1)], tmp_path)
    assert split.skipped_pages == [
        {"document": "broken", "page": 1, "reason": "cannot be read by PDFium"}
    ]
    assert [a["text"] for a in split.annotations] == ["Hi there"]


# ------------------------------------------------------------ coordinates


def _turned_page(source_path, rotation):
    """
    A page that displays as page 0 of source_path but is stored turned: its content is
    rotated counterclockwise by `rotation` and shifted by (10, 15) inside a larger media
    box, its crop box is the shifted page and its /Rotate turns it back.
    """
    source = pdfium.PdfDocument(source_path)
    width, height = source[0].get_size()
    turned = rotation in (90, 270)
    page_w, page_h = (height, width) if turned else (width, height)
    a, b, c, d, e, f = {
        0: (1, 0, 0, 1, 0, 0),
        90: (0, 1, -1, 0, height, 0),
        180: (-1, 0, 0, -1, width, height),
        270: (0, -1, 1, 0, 0, width),
    }[rotation]
    pdf = pdfium.PdfDocument.new()
    page = pdf.new_page(page_w, page_h)
    content = source.page_as_xobject(0, pdf)
    obj = content.as_pageobject()
    obj.set_matrix(pdfium.PdfMatrix(a, b, c, d, e + 10, f + 15))
    page.insert_obj(obj)
    page.gen_content()
    page.set_mediabox(10 - 40, 15 - 35, 10 + page_w + 25, 15 + page_h + 30)
    page.set_cropbox(10, 15, 10 + page_w, 15 + page_h)
    page.set_rotation(rotation)
    saved = io.BytesIO()
    pdf.save(saved)
    return pdfium.PdfDocument(saved.getvalue())[0]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_turned_pages_with_an_offset_crop_box_keep_exact_boxes(pdf_dir, rotation):
    """Boxes follow the page's /Rotate and its crop box inside a shifted media box."""
    page = _turned_page(pdf_dir / "alpha.pdf", rotation)
    assert page.get_rotation() == rotation
    glyphs, tilted = prep.page_glyphs(page)
    assert not tilted
    pixels = prep.render_page(page)
    runs = prep.page_runs(glyphs, prep.body_size(glyphs))
    expected = expected_classes("Alpha")
    assert sorted(text.replace(" ", "") for _, text, _ in runs) == sorted(expected)
    for box, text, category in runs:
        ink = _ink_box(pixels, box)
        assert ink is not None and np.abs(ink - np.array(box)).max() <= 1.0, (text, box, ink)
        assert expected[text.replace(" ", "")] == category


def test_text_that_is_not_horizontal_on_the_rendered_page_is_flagged(pdf_dir):
    """A /Rotate without turned content shows the text vertical or upside down."""
    source = pdfium.PdfDocument(pdf_dir / "alpha.pdf")
    for rotation in (90, 180, 270):
        source[0].set_rotation(rotation)
        glyphs, tilted = prep.page_glyphs(source[0])
        assert tilted and not glyphs, rotation


def test_glyphs_are_rendered_where_the_text_layer_puts_them():
    """
    PDFium snaps a glyph to a whole pixel vertically (a third horizontally); rendered 4x
    larger and averaged, an 'l' (a bar) at 30 sub-pixel offsets has its ink centred in its
    box to within a quarter pixel.
    """
    content = b"".join(
        b"BT /F1 10 Tf %.3f %.3f Td (l) Tj ET " % (10 + k * 9 + k / 15, 100 + k / 15)
        for k in range(30)
    )
    page = pdfium.PdfDocument(minimal_pdf(content))[0]
    glyphs, _ = prep.page_glyphs(page)
    darkness = 255 - prep.render_page(page).min(axis=2).astype(float)
    assert len(glyphs) == 30
    for g in glyphs:
        x0, y0, x1, y1 = int(g.x0) - 2, int(g.y0) - 2, int(g.x1) + 3, int(g.y1) + 3
        window = darkness[y0:y1, x0:x1]
        centre_x = (window.sum(axis=0) * (np.arange(x0, x1) + 0.5)).sum() / window.sum()
        centre_y = (window.sum(axis=1) * (np.arange(y0, y1) + 0.5)).sum() / window.sum()
        assert abs(centre_x - (g.x0 + g.x1) / 2) < 0.25, g
        assert abs(centre_y - (g.y0 + g.y1) / 2) < 0.25, g


def test_glyphs_not_wholly_on_the_page_are_left_out():
    """'Hello' at x = 250 on a 300 pt page: the 'o' crosses the edge."""
    page = pdfium.PdfDocument(minimal_pdf(b"BT /F1 24 Tf 250 100 Td (Hello) Tj ET"))[0]
    glyphs, _ = prep.page_glyphs(page)
    assert "".join(g.char for g in glyphs) == "Hell"
    assert max(g.x1 for g in glyphs) <= 300 * prep.RENDER_SCALE


def test_page_to_pixels_maps_the_visible_box_corners_to_the_bitmap_corners():
    page = pdfium.PdfDocument(minimal_pdf(b"")).get_page(0)
    page.set_mediabox(-5, 0, 300, 300)
    page.set_cropbox(10, 20, 110, 220)  # 100 x 200 points
    for rotation, size in ((0, (50, 100)), (90, (100, 50)), (180, (50, 100)), (270, (100, 50))):
        page.set_rotation(rotation)
        affine = prep.page_to_pixels(page, *size)
        corners = affine @ np.array([[10, 110, 10, 110], [20, 20, 220, 220], [1, 1, 1, 1]])
        # The page's top left corner goes where the rotation takes it, clockwise.
        top_left = {0: (0, 0), 90: (size[0], 0), 180: size, 270: (0, size[1])}[rotation]
        assert tuple(corners[:, 2]) == pytest.approx(top_left), rotation
        assert sorted(corners[0]) == pytest.approx([0, 0, size[0], size[0]])
        assert sorted(corners[1]) == pytest.approx([0, 0, size[1], size[1]])


def test_text_matrix_scaling_counts_in_the_font_size():
    """`1 Tf` with a 12x text matrix is 12-point text (PDFium reports the Tf size)."""
    plain = prep.page_glyphs(
        pdfium.PdfDocument(minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Hi) Tj ET"))[0]
    )
    scaled = minimal_pdf(b"BT /F1 1 Tf 12 0 0 12 20 100 Tm (Hi) Tj ET")
    glyphs = prep.page_glyphs(pdfium.PdfDocument(scaled)[0])[0]
    assert [g.size for g in glyphs] == pytest.approx([12 * prep.RENDER_SCALE] * 2)
    assert [g.size for g in plain[0]] == pytest.approx([g.size for g in glyphs])


def test_invisible_text_is_no_text():
    """Render mode 3 (the OCR layer of a scanned page) is not labelled."""
    pdf = pdfium.PdfDocument(minimal_pdf(b"BT 3 Tr /F1 12 Tf 20 100 Td (Hidden) Tj ET"))
    assert prep.page_glyphs(pdf[0]) == ([], False)


# ------------------------------------------------------------ runs, classes, images


def _glyph(x0, x1, baseline=100.0, size=15.0, monospace=False, bold=False, char="a"):
    return prep.Glyph(x0, baseline - 10, x1, baseline, baseline, size, monospace, bold, char, False)


def test_lines_split_at_wide_gaps_and_keep_their_superscripts():
    gap = prep.SPLIT_GAP_EM * 15
    glyphs = [
        _glyph(0, 10),
        _glyph(11, 20),
        _glyph(20 + gap - 1, 30 + gap),  # just under the gap: same run
        _glyph(30 + 2 * gap + 1, 40 + 2 * gap),  # just over: a new run
        _glyph(21, 25, baseline=100 - 0.45 * 15, size=10, char="1"),  # a superscript
        _glyph(0, 10, baseline=100 + 1.1 * 15),  # the next line
    ]
    runs = prep.text_runs(glyphs, body=15.0)
    assert [[glyphs.index(g) for g in run] for run in runs] == [[0, 1, 4, 2], [3], [5]]


def test_glyph_and_run_classes():
    body = 15.0
    assert prep.glyph_class(_glyph(0, 1, size=body * prep.HEADING_SIZE_RATIO), body) == "heading"
    assert prep.glyph_class(_glyph(0, 1, size=30, monospace=True), body) == "heading"
    assert prep.glyph_class(_glyph(0, 1, monospace=True, bold=True), body) == "code"
    assert prep.glyph_class(_glyph(0, 1, bold=True), body) == "heading"
    assert prep.glyph_class(_glyph(0, 1, size=body * 1.1), body) == "body"
    mono, plain = _glyph(0, 1, monospace=True), _glyph(0, 1)
    assert prep.run_class([mono, mono, plain], body) == "code"
    assert prep.run_class([mono, plain, plain], body) == "body"
    assert prep.run_class([mono, plain], body) == "code"  # a tie goes to code before body
    assert prep.run_class([_glyph(0, 1, bold=True), mono], body) == "heading"


def test_body_size_is_the_commonest_proportional_size():
    glyphs = [_glyph(0, 1, size=12)] * 3 + [_glyph(0, 1, size=10, monospace=True)] * 9
    assert prep.body_size(glyphs) == 12
    assert prep.body_size([_glyph(0, 1, size=10, monospace=True)]) == 10


def test_band_cuts_never_cut_a_box_and_keep_at_most_100_boxes():
    # 150 lines 12 px high every 16 px; a box spanning lines 10-12 allows no cut there.
    boxes = np.array([[10, 16 * k, 500, 16 * k + 12] for k in range(150)], dtype=float)
    boxes = np.vstack([boxes, [[20, 165.5, 40, 195.5]]])
    cuts = prep.band_cuts(boxes, 0, 2400)
    assert cuts[0] == 0 and cuts[-1] == 2400 and cuts == sorted(set(cuts))
    for cut in cuts[1:-1]:
        assert not ((boxes[:, 1] < cut) & (boxes[:, 3] > cut)).any(), cut
    centres = (boxes[:, 1] + boxes[:, 3]) / 2
    assert np.histogram(centres, bins=cuts)[0].max() <= prep.MAX_OBJECTS_PER_IMAGE
    assert len(cuts) - 1 == int(np.ceil(2400 / prep.MAX_IMAGE_HEIGHT))
    # 101 boxes on one line admit no cut at all.
    same_line = np.array([[10 * k, 0, 10 * k + 8, 12] for k in range(101)], dtype=float)
    assert prep.band_cuts(same_line, 0, 30) is None


def test_box_ink_agreement():
    pixels = np.full((40, 60), 255, dtype=np.uint8)
    pixels[10:20, 10:30] = 0  # ink of [10, 30) x [10, 20)
    # A box 2 px short on the left, a box over no ink.
    ious, deviations = prep.box_ink_agreement(pixels, [[12, 10, 30, 20], [40, 30, 50, 35]])
    assert ious == pytest.approx([18 / 20, 0.0])
    assert deviations == pytest.approx([2.0, np.inf])
    # A neighbour's ink 2 px below is not this box's ink when the neighbour has its box.
    pixels[22:25, 10:30] = 0
    ious, deviations = prep.box_ink_agreement(pixels, [[10, 10, 30, 20], [10, 22, 30, 25]])
    assert ious == pytest.approx([1.0, 1.0]) and deviations == pytest.approx([0.0, 0.0])
    iou, deviation = prep.box_ink_agreement(pixels, [[10, 10, 30, 20]])
    assert deviation[0] == 3.0 and iou[0] == pytest.approx(200 / 260)  # row 22 counts
    summary = prep.exactness_summary([0.9, 0.96, 1.0], [2.0, 0.5, 0.0])
    assert summary == {
        "boxes": 3,
        "iou_min": 0.9,
        "iou_median": 0.96,
        "iou_at_least": {"0.9": 1.0, "0.95": 0.6667, "0.99": 0.3333},
        "sides_within_1px": 0.6667,
    }


def test_select_pages_spreads_evenly_over_documents():
    docs = [
        prep.Document(n, None, n, first, end, "") for n, first, end in (("a", 0, 10), ("b", 5, 35))
    ]
    assert prep.select_pages(docs, 4) == [(0, 5), (1, 10), (1, 20), (1, 30)]
    assert len(prep.select_pages(docs, None)) == 40 == len(prep.select_pages(docs, 99))


def test_default_documents_cover_the_reference_manual_once():
    ranges = sorted((f, e) for _, _, file, f, e in prep.DEFAULT_DOCUMENTS if file == "refman.pdf")
    assert ranges[0][0] == 0 and ranges[-1][1] == 2415
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    splits = {s: {f for s2, _, f, _, _ in prep.DEFAULT_DOCUMENTS if s2 == s} for s in prep.SPLITS}
    # Both layouts, the reference manual's and the Texinfo manuals', in every split.
    assert all("refman.pdf" in files and len(files) >= 2 for files in splits.values())
    assert "fullrefman.pdf" not in {f for _, _, f, _, _ in prep.DEFAULT_DOCUMENTS}


def test_two_saves_of_one_pdf_have_one_content_digest():
    first = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Hi) Tj ET", file_id=b"A" * 16)
    second = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Hi) Tj ET", file_id=b"B" * 16)
    other = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Ho) Tj ET", file_id=b"A" * 16)
    assert first != second
    assert prep.content_digest(first) == prep.content_digest(second) != prep.content_digest(other)


# ------------------------------------------------------------ the Debian package


def _ar(members):
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def _tar_xz(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            if data is None:  # a symlink, as the package's doc/ links are
                info.type, info.linkname = tarfile.SYMTYPE, "../../R/doc/manual/refman.pdf"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_pdfs_are_unpacked_from_a_deb(tmp_path):
    pdf = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Hi) Tj ET")
    data = _tar_xz(
        [
            ("./usr/share/R/doc/manual/refman.pdf", pdf),
            ("./usr/share/R/doc/manual/R-FAQ.pdf", b"other"),
            ("./usr/share/doc/r-doc-pdf/manual/refman.pdf", None),
        ]
    )
    deb = tmp_path / "tiny.deb"
    deb.write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz([])), ("data.tar.xz", data)])
    )
    paths = prep.extract_deb_pdfs(deb, ["refman.pdf"], tmp_path)
    assert paths == {"refman.pdf": tmp_path / "refman.pdf"}
    assert paths["refman.pdf"].read_bytes() == pdf
    with pytest.raises(prep.PrepareError, match="lacks usr/share/R/doc/manual/R-intro.pdf"):
        prep.extract_deb_pdfs(deb, ["refman.pdf", "R-intro.pdf"], tmp_path)
    deb.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(prep.PrepareError, match="not a Debian package"):
        prep.extract_deb_pdfs(deb, ["refman.pdf"], tmp_path)


def test_a_package_with_another_hash_is_refused(tmp_path):
    fake = tmp_path / prep.DEB_FILE
    fake.write_bytes(b"not the package")
    with pytest.raises(prep.PrepareError) as err:
        prep.check_deb(fake)
    message = str(err.value)
    assert str(fake) in message and prep.DEB_SHA256 in message and "Refusing" in message
    assert hashlib.sha256(b"not the package").hexdigest() in message
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        prep.main(["--output", str(tmp_path / "out"), "--deb", str(fake)])
    assert not (tmp_path / "out" / "documents_train.json").exists()
    with pytest.raises(prep.PrepareError, match="cannot read package"):
        prep.check_deb(tmp_path / "absent.deb")


def test_without_apt_the_error_says_where_to_get_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(prep.shutil, "which", lambda name: None)
    with pytest.raises(prep.PrepareError) as err:
        prep.download_deb(tmp_path)
    assert prep.DEB_MIRROR_PATH in str(err.value) and "--deb" in str(err.value)


def test_user_pdfs_fill_test_then_val_then_train():
    def doc(name, pages, digest):
        return prep.Document(name, None, name, 0, pages, digest)

    docs = [doc("a", 50, "3"), doc("b", 5, "1"), doc("c", 5, "2"), doc("d", 40, "4")]
    assert prep.split_by_digest(docs) == {
        "test": [docs[1], docs[2]],
        "val": [docs[0]],
        "train": [docs[3]],
    }
    three = docs[1:]
    assert prep.split_by_digest(three) == {"test": [docs[1]], "val": [docs[2]], "train": [docs[3]]}
