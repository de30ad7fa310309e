"""tools/demo.py on an image (with the per-stage view) and on a short video."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.structures import Instances

from tests.helpers import CONFIG, REPO, load_script

# The trees demo model, untrained and small; every detection drawn.
OPTS = [
    "MODEL.WEIGHTS",
    "",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "96",
]


@pytest.fixture(scope="module")
def demo():
    return load_script("tools/demo.py")


def _run(demo, *args):
    demo.main(
        [
            "--config-file",
            str(REPO / CONFIG),
            "--confidence-threshold",
            "0",
            *map(str, args),
            "--opts",
            *OPTS,
        ]
    )


def _near(image, colour, tolerance=40):
    """Pixels within `tolerance` of an RGB colour given in [0, 1]."""
    target = np.array(colour) * 255
    return int((np.abs(image[:, :, :3].astype(float) - target).max(axis=2) < tolerance).sum())


def test_image_with_stage_view(demo, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    _run(demo, "--input", tmp_path, "--output", tmp_path / "out", "--stages", "--stages-topk", "3")
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape[:2] == (64, 80)
    stages = np.asarray(Image.open(tmp_path / "out" / "a_stages.png"))
    assert stages.shape[:2] == (128, 160)  # drawn at twice the size


def test_stage_view_draws_the_top_detections_path_one_colour_per_stage(demo):
    """Two detections; each column of the top one's path in its own place, right of the legend."""
    instances = Instances((100, 160), scores=torch.tensor([0.5, 0.9]))
    path = [[60.0 + 25 * k, 10.0, 80.0 + 25 * k, 30.0] for k in range(4)]  # proposal, stages
    low = [[60.0, 60.0 + 10 * k, 80.0, 70.0 + 10 * k] for k in range(4)]
    instances.stage_boxes = torch.tensor([low, path])
    image = np.full((100, 160, 3), 40, dtype=np.uint8)
    drawn = demo.draw_stages(image, instances, top_k=1).get_image()  # at twice the size
    colours = [demo.PROPOSAL_COLOUR, *demo.STAGE_COLOURS[:3]]
    for (x0, y0, x1, y1), colour in zip(path, colours):
        box = drawn[int(2 * y0) - 3 : int(2 * y1) + 4, int(2 * x0) - 3 : int(2 * x1) + 4]
        assert _near(box, colour) > 20, colour
    assert all(_near(drawn[110:, 100:], c) == 0 for c in colours), "the lower-scoring one is drawn"


def test_stage_movements_are_measured_from_the_box_each_stage_was_given(demo):
    instances = Instances((100, 160), scores=torch.tensor([0.9, 0.5, 0.1]))
    start = torch.tensor([10.0, 10.0, 50.0, 50.0])
    shifts = torch.tensor(
        [  # per detection, how far every edge moves at stages 1, 2, 3
            [4.0, 2.0, 1.0],
            [8.0, -2.0, 0.0],
            [100.0, 100.0, 100.0],  # below the top 2
        ]
    )
    instances.stage_boxes = start + torch.cat([torch.zeros(3, 1), shifts.cumsum(1)], 1)[..., None]
    moves = demo.stage_movements(instances, top_k=2)
    assert moves == [pytest.approx(m) for m in [(6.0, 8.0), (2.0, 2.0), (0.5, 1.0)]]


def test_video(demo, tmp_path):
    video = str(tmp_path / "in.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (80, 64))
    for i in range(3):
        writer.write(np.full((64, 80, 3), 60 * i, dtype=np.uint8))
    writer.release()
    _run(demo, "--video-input", video, "--output", tmp_path / "out.mp4")
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 80
