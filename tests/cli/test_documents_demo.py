"""
The documents path end to end, on a handful of pages made here: scripts/prepare_documents.py
turns PDFs into a set under $DETECTRON2_DATASETS, and train_net.py trains the documents
cascade on it for a few iterations and evaluates it at AP50 to AP95, every stage included.
"""

import subprocess
import sys

import pytest
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from tests.helpers import REPO, copypaste_bbox, env, metrics

pytestmark = pytest.mark.e2e

LINES = [  # (text, points, family, weight)
    ("A Heading of the Page", 16, "DejaVu Sans", "bold"),
    ("Body text in a serif font, a whole line of it.", 10, "DejaVu Serif", "normal"),
    ("fit <- lm(y ~ x, data = d)", 10, "DejaVu Sans Mono", "normal"),
    ("More body text, so that ten points is the body size.", 10, "DejaVu Serif", "normal"),
    ("summary(fit)", 10, "DejaVu Sans Mono", "normal"),
]


def _pdf(path, pages):
    """A PDF of `pages` pages whose lines end with the file's name (no two PDFs are alike)."""
    with PdfPages(path) as pdf:
        for page in range(pages):
            figure = Figure(figsize=(6, 3))
            for i, (text, size, family, weight) in enumerate(LINES):
                line = f"{text} {path.stem} {page}"
                figure.text(0.06, 0.88 - 0.17 * i, line, size=size, family=family, weight=weight)
            pdf.savefig(figure)


def test_prepare_then_train_and_evaluate_the_cascade(tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name in ("one", "two", "three", "four"):
        _pdf(pdfs / f"{name}.pdf", pages=2)
    datasets = tmp_path / "datasets"
    environment = {**env(), "DETECTRON2_DATASETS": str(datasets)}
    prepare = [sys.executable, "scripts/prepare_documents.py", "--pdf-dir", str(pdfs)]
    prepare += ["--name", "documents", "--output", str(datasets / "documents")]
    proc = subprocess.run(prepare, cwd=REPO, env=environment, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val", "test"):
        assert (datasets / "documents" / f"documents_{split}.json").is_file()

    output = tmp_path / "out"
    train = [sys.executable, "train_net.py", "--config-file"]
    train += ["configs/documents/cascade_rcnn_documents.yaml", "OUTPUT_DIR", str(output)]
    train += "SOLVER.MAX_ITER 3 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 1".split()
    train += "DATALOADER.NUM_WORKERS 0 TEST.CASCADE_STAGE_EVAL True".split()
    proc = subprocess.run(train, cwd=REPO, env=environment, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert copypaste_bbox(proc.stdout + proc.stderr)  # the COCO evaluation of documents_val
    last = metrics(output)[-1]
    for metric in ("AP", "AP50", "AP75", "AP85", "AP90", "AP95"):
        assert f"bbox/{metric}" in last
    for stages in ("1", "2", "3", "1~3"):
        assert f"cascade_stages/{stages}/AP95" in last
    assert (output / "final_weights.sha256").is_file()
