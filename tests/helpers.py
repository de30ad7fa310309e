"""
Everything the tests share: tiny models and synthetic batches, so that the suite runs on a
CPU; hand-set stages; the tiny models the export tests trace; and running train_net.py
with a tiny recipe.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

from projects.cascade import add_cascade_config
from projects.cascade.engine.trainer import weights_fingerprint

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path):
    """
    A script of the repository (not a package module) imported by its path, with its folder
    on sys.path as when it runs, so that it imports its neighbours (tools/analysis_cli.py).
    """
    path = REPO / relative_path
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ tiny models


def tiny_cfg(
    roi_heads="CascadeRCNNROIHeads",
    mask=False,
    stages=3,
    num_classes=3,
    class_specific=False,
    **cascade_options,
):
    """
    An R-18 FPN small enough for CPU tests, on detectron2's cascade recipe.
    `cascade_options` set keys of MODEL.ROI_BOX_CASCADE_HEAD (TEST_SCORE="last", ...).
    """
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Base-Cascade-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 32
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = not class_specific
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    ious = [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = ious
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
        (10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1)) for k in range(stages)
    ]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0] * stages
    for key, value in cascade_options.items():
        setattr(cfg.MODEL.ROI_BOX_CASCADE_HEAD, key, value)
    cfg.INPUT.MIN_SIZE_TEST = 0  # keep the synthetic images' own size
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def build_like(reference, cfg):
    """A model built from `cfg` with the weights of `reference`."""
    model = build(cfg)
    model.load_state_dict(reference.state_dict())
    return model


def synthetic_batch(num_classes=3, with_masks=False, seed=0, sizes=((128, 160), (96, 128))):
    """Random images with a few random ground-truth boxes each (the second image has one box)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        n = 4 if i == 0 else 1
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        if with_masks:
            masks = torch.zeros(n, h, w, dtype=torch.bool)
            for j, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.round().long().tolist()):
                masks[j, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "height": h, "width": w, "instances": inst})
    return batch


def rescaled_inputs(sizes, scale, with_masks=False):
    """
    A synthetic batch with image ids, whose "original" images are `scale` times larger than
    the network's input: the model rescales its outputs, as for resized images.
    """
    batch = synthetic_batch(with_masks=with_masks, sizes=sizes)
    for i, x in enumerate(batch):
        x["image_id"] = i
        x["height"], x["width"] = round(x["height"] * scale), round(x["width"] * scale)
    return batch


def assert_same_detections(expected, got, masks=False):
    """Two models' outputs for the same batch hold bit-identical detections."""
    assert sum(len(r["instances"]) for r in expected) > 0, "the test needs some detections"
    for e, g in zip(expected, got):
        e, g = e["instances"], g["instances"]
        assert e.image_size == g.image_size
        assert torch.equal(e.pred_boxes.tensor, g.pred_boxes.tensor)
        assert torch.equal(e.scores, g.scores)
        assert torch.equal(e.pred_classes, g.pred_classes)
        if masks:
            assert torch.equal(e.pred_masks, g.pred_masks)


# ------------------------------------------------------------- hand-set stages


def run_heads(model, batch, proposals=None, train=False):
    """Run the ROI heads on `proposals` (the RPN's when None); return (output, features)."""
    model.train(train)
    images = model.preprocess_image(batch)
    with torch.set_grad_enabled(train):
        features = model.backbone(images.tensor)
        targets = [b["instances"] for b in batch] if train else None
        if proposals is None:
            proposals, _ = model.proposal_generator(images, features, targets)
        output, losses = model.roi_heads(images, features, proposals, targets)
    return (losses if train else output), features


def record_stage_inputs(monkeypatch, heads):
    """The proposals each stage runs on, appended as the stages run."""
    seen = []
    run_stage = heads._run_stage

    def recording(features, proposals, stage):
        seen.append(proposals)
        return run_stage(features, proposals, stage)

    monkeypatch.setattr(heads, "_run_stage", recording)
    return seen


def proposals_of(batch, boxes_per_image):
    """Proposals holding the given boxes, one tensor per image of `batch`."""
    proposals = []
    for b, boxes in zip(batch, boxes_per_image):
        p = Instances((b["height"], b["width"]))
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.zeros(len(boxes))
        proposals.append(p)
    return proposals


def random_boxes(batch, seed, count=30, min_size=8.0):
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for b in batch:
        h, w = b["height"], b["width"]
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = min_size + torch.rand(count, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2])
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


def proposals_like_rpn(batch, seed, count=20):
    """`count` random boxes per image with random objectness, as the RPN would give."""
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for b in batch:
        h, w = b["height"], b["width"]
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 8 + torch.rand(count, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        p = Instances((h, w))
        p.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        p.objectness_logits = torch.rand(count, generator=g)
        proposals.append(p)
    return proposals


class FixedProposals(nn.Module):
    """An RPN that proposes the same boxes in every image."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = boxes

    def forward(self, images, features, gt_instances=None):
        proposals = [
            Instances(
                size,
                proposal_boxes=Boxes(self.boxes.clone()),
                objectness_logits=torch.zeros(len(self.boxes)),
            )
            for size in images.image_sizes
        ]
        return proposals, {}


@torch.no_grad()
def set_predictor(predictor, class_logits=None, deltas=None):
    """Make a stage predict the same class logits and (weighted) deltas for every box."""
    if class_logits is not None:
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor(class_logits))
    if deltas is not None:
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor(deltas))


def regressed(predictor, deltas, boxes, image_size):
    """`boxes` moved by the weighted `deltas` (one row, or one per box), clipped to the image."""
    deltas = torch.as_tensor(deltas, dtype=torch.float32).expand(len(boxes), 4)
    moved = Boxes(predictor.box2box_transform.apply_deltas(deltas, boxes))
    moved.clip(image_size)
    return moved.tensor


def rows_in(rows, table):
    """Which of `rows` appear (to float precision) in `table`."""
    if len(table) == 0:
        return torch.zeros(len(rows), dtype=torch.bool)
    return torch.cdist(rows, table, p=float("inf")).min(dim=1).values < 1e-3


# ---------------------------------------------------------- the exported models

# On a featureless image (the pixel mean everywhere) the random heads, whose biases start at
# zero, give every class exactly 1/(K+1) = 0.25; on noise the best scores reach about 0.3.
# Between the two, the featureless image has no detection and the others have some.
EXPORT_SCORE_THRESH = 0.26

EXPORT_MODELS = {
    # RGB input, so that the runner's RGB path is tested too (the graph is the same).
    "cascade": {"input_format": "RGB"},
    "cascade_mask": {"mask": True},
    # Class-specific regression, one mask head per stage and pruning before stage 2: the
    # cascade's code that picks one box per row, averages the mask heads and keeps the
    # top-k rows is traced too.
    "cascade_mask_options": {"mask": True, "options": True},
    # Pruning by NMS among stage 1's refined boxes, then top-k of the survivors.
    "cascade_nms_prune": {"nms_prune": True},
}


def tiny_export_cfg(mask=False, options=False, input_format="BGR", nms_prune=False):
    cfg = tiny_cfg(mask=mask)
    cfg.INPUT.FORMAT = input_format
    # A test-time resize (128x160 -> 100x125) that the runner must undo. Tests that give
    # the model tensors directly bypass it.
    cfg.INPUT.MIN_SIZE_TEST = 100
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = EXPORT_SCORE_THRESH
    # detectron2's default: the number of proposals then depends on the image.
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    if options:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.MASK_PER_STAGE = True
        # Fewer than the traced image's proposals, more than the tiny image's.
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK = 50
    if nms_prune:
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_NMS_THRESH = 0.7
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK = 50
    return cfg


def noise(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()


def featureless(model, h, w):
    return model.pixel_mean.expand(3, h, w).clone()


def eager_inference(model, image):
    """The model's detections on `image`, at the network's input size."""
    with torch.no_grad():
        return model.inference([{"image": image}], do_postprocess=False)[0]


def export_test_images(model):
    """The traced image, images of other sizes, and one on which the model detects nothing."""
    return {
        "traced image": noise(128, 160, 0),
        "smaller": noise(96, 128, 1),
        "odd size, portrait": noise(200, 90, 2),
        "larger": noise(256, 320, 3),
        "tiny, few proposals": noise(24, 24, 4),
        "featureless": featureless(model, 64, 96),
    }


# ------------------------------------------------------------------ train_net.py

CONFIG = "configs/trees/cascade_rcnn_trees.yaml"

# The demo recipe shrunk to a few seconds per run: train_net.py's default in these helpers.
TINY_CONFIG = "configs/trees/cascade_rcnn_trees_tiny.yaml"

LAZY_CONFIG = "configs/trees/cascade_rcnn_trees.py"

# The LazyConfig demo shrunk the same way (its 64-channel FPN and 256-wide heads kept).
TINY_LAZY = [
    "dataloader.train.num_workers=0",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
    "dataloader.train.mapper.augmentations.0.max_size=128",
    "dataloader.test.mapper.augmentations.0.short_edge_length=160",
    "dataloader.test.mapper.augmentations.0.max_size=160",
    "dataloader.test.num_workers=0",
    "dataloader.test.dataset.names=trees_test",
    "model.proposal_generator.post_nms_topk=[100,100]",
    "model.roi_heads.batch_size_per_image=32",
]


def env():
    """One thread per process: the same arithmetic in every run, and no oversubscription."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def command(*args, config=TINY_CONFIG):
    return [sys.executable, "train_net.py", "--config-file", config, *map(str, args)]


def run(*args, expect_ok=True, extra_env=None, timeout=600, config=TINY_CONFIG):
    """Run train_net.py; return its combined output. Fails the test on an unexpected exit code."""
    proc = subprocess.run(
        command(*args, config=config),
        cwd=REPO,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, f"exit code {proc.returncode}\n{output[-4000:]}"
    return output


def rendezvous(folder):
    """
    A --dist-url through a file rather than a port: a port picked as free may be taken by
    another process before rank 0 binds it; a file in the test's own folder cannot be.
    """
    return f"file://{Path(folder) / 'rendezvous'}"


def no_network(monkeypatch, empty_folder):
    """
    From here on, in this test: no socket can connect or resolve a name, and torch hub's and
    iopath's caches are an empty folder, so that what reaches for weights fails.
    """

    def refuse(*args, **kwargs):
        raise OSError("the network is out of reach in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(empty_folder))
    monkeypatch.setenv("FVCORE_CACHE", str(empty_folder))


def free_port():
    """Only for the test of the README's tcp:// command: it races as explained above."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_fingerprint(log_file):
    """The weights fingerprint a rank logged after training (rank 0's is also in its file)."""
    found = re.findall(r"after training: sha256 ([0-9a-f]{64})", Path(log_file).read_text())
    assert len(found) == 1, f"{log_file}: {found}"
    return found[0]


def checkpoint_fingerprint(path):
    return weights_fingerprint(torch.load(path, map_location="cpu", weights_only=True)["model"])


def metrics(output_dir):
    lines = (Path(output_dir) / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def copypaste_bbox(output):
    """The bbox metrics line detectron2 prints as `copypaste: AP,AP50,...`."""
    rows = re.findall(r"copypaste: AP,AP50,AP75,APs,APm,APl\S*\n.*copypaste: (\S+)", output)
    assert len(rows) == 1, rows
    return rows[0]
