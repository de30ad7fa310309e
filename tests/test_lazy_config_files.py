"""
The LazyConfig files in configs/: each builds, and those that restate a YAML recipe build
the YAML's model (same parameter names, shapes and frozen parameters; for the same weights
the same detections) with the same schedule.
"""

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, build_lr_scheduler, build_optimizer
from detectron2.utils.events import EventStorage

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.config_loader import load_config
from projects.cascade.modeling.roi_heads.scoring import mean_of_stage_logits
from tests.helpers import REPO, assert_same_detections, no_network, synthetic_batch

SAME_AS_YAML = {
    "configs/cascade_rcnn_R_50_FPN_1x.py": "configs/cascade_rcnn_R_50_FPN_1x.yaml",
    "configs/cascade_mask_rcnn_R_50_FPN_1x.py": "configs/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "configs/trees/cascade_rcnn_trees.py": "configs/trees/cascade_rcnn_trees.yaml",
    "configs/documents/cascade_rcnn_documents.py": "configs/documents/cascade_rcnn_documents.yaml",
}


def _lazy(path):
    return LazyConfig.load(str(REPO / path))


def _models(lazy_path, yaml_path, device="cpu", resnet18=False):
    """The models of the YAML and of the LazyConfig (with a ResNet-18, if `resnet18`)."""
    opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""]
    lazy = _lazy(lazy_path)
    if resnet18:  # with 64-wide box heads and 100 proposals, for a quick build and forward
        opts += [
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            "100",
            "MODEL.ROI_BOX_HEAD.FC_DIM",
            "64",
        ]
        lazy.model.backbone.bottom_up.stages.depth = 18
        del lazy.model.backbone.bottom_up.stages.stride_in_1x1  # no argument of ResNet-18's blocks
        lazy.model.proposal_generator.post_nms_topk = (2000, 100)
        for head, predictor in zip(
            lazy.model.roi_heads.box_heads, lazy.model.roi_heads.box_predictors
        ):
            head.fc_dims = [64, 64]
            predictor.input_shape = ShapeSpec(channels=64)
    cfg = load_config(str(REPO / yaml_path), opts)
    with torch.device(device):
        torch.manual_seed(0)
        from_yaml = build_model(cfg)
        from_lazy = instantiate(lazy.model)
    return cfg, from_yaml, from_lazy


def _parameters(model):
    return {n: (p.shape, p.requires_grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("lazy_path, yaml_path", SAME_AS_YAML.items())
def test_lazy_config_builds_the_yaml_model(lazy_path, yaml_path, monkeypatch, tmp_path):
    # The models as configured, on the meta device (shapes without memory): the same parameters,
    # built with no network and empty weight caches.
    with monkeypatch.context() as offline:
        no_network(offline, tmp_path)
        cfg, from_yaml, from_lazy = _models(lazy_path, yaml_path, device="meta")
    assert type(from_lazy.roi_heads) is CascadeRCNNROIHeads
    assert _parameters(from_lazy) == _parameters(from_yaml)
    assert from_lazy.roi_heads.mask_on == cfg.MODEL.MASK_ON

    # Real weights, ResNets made ResNet-18s on both sides: the same detections.
    resnet = cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    cfg, from_yaml, from_lazy = _models(lazy_path, yaml_path, resnet18=resnet)
    # A random ResNet's features are in the thousands, and its RPN would send every anchor to
    # the whole image: with no box deltas, the RPN proposes its anchors.
    deltas = from_yaml.proposal_generator.rpn_head.anchor_deltas
    torch.nn.init.zeros_(deltas.weight)
    torch.nn.init.zeros_(deltas.bias)
    from_lazy.load_state_dict(from_yaml.state_dict(), strict=True)
    for model in (from_yaml, from_lazy):
        model.eval()
        for predictor in model.roi_heads.box_predictor:
            predictor.test_score_thresh = 0.0  # random weights score low
            predictor.test_topk_per_image = 10  # and few masks to compute
    batch = synthetic_batch(num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES, sizes=((128, 160),))
    with torch.no_grad():
        assert_same_detections(from_yaml(batch), from_lazy(batch), masks=cfg.MODEL.MASK_ON)


@pytest.mark.parametrize("lazy_path, yaml_path", SAME_AS_YAML.items())
def test_lazy_config_has_the_yaml_schedule_and_data(lazy_path, yaml_path):
    cfg = load_config(str(REPO / yaml_path), [])
    lazy = _lazy(lazy_path)
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER
    assert lazy.dataloader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    names = lazy.dataloader.train.dataset.names
    assert tuple([names] if isinstance(names, str) else names) == cfg.DATASETS.TRAIN
    assert lazy.dataloader.train.mapper.image_format == cfg.INPUT.FORMAT
    model = torch.nn.Linear(2, 2)
    yaml_optimizer = build_optimizer(cfg, model)
    yaml_schedule = build_lr_scheduler(cfg, yaml_optimizer)
    lazy.optimizer.params.model = model
    lazy_optimizer = instantiate(lazy.optimizer)
    lazy_schedule = LRMultiplier(
        lazy_optimizer, instantiate(lazy.lr_multiplier), lazy.train.max_iter
    )
    for key in ("lr", "momentum", "weight_decay", "nesterov"):
        assert lazy_optimizer.defaults[key] == yaml_optimizer.defaults[key], key
    for _ in range(cfg.SOLVER.MAX_ITER if cfg.SOLVER.MAX_ITER <= 1200 else 0):  # the demos
        assert lazy_optimizer.param_groups[0]["lr"] == pytest.approx(
            yaml_optimizer.param_groups[0]["lr"]
        )
        yaml_schedule.step()
        lazy_schedule.step()
    for it in (0, 999, 1000, 59999, 60000, 80000, 89999):  # the 1x schedules' corners
        if it < cfg.SOLVER.MAX_ITER:
            assert lazy_schedule._multiplier(it / lazy.train.max_iter) == pytest.approx(
                yaml_schedule._multiplier(it / cfg.SOLVER.MAX_ITER)
            )


def test_seed_recipe_maps_mmdetection():
    """configs/cascade_rcnn_R_50_FPN_1x_mmdet_recipe.py builds, with mmdetection's settings."""
    lazy = _lazy("configs/cascade_rcnn_R_50_FPN_1x_mmdet_recipe.py")
    with torch.device("meta"):  # the modules, without memory
        model = instantiate(lazy.model)
    heads = model.roi_heads
    assert heads.stage_loss_weights == [1.0, 0.5, 0.25]
    assert heads.feature_gradient_scale == 1.0
    assert heads.scorer is mean_of_stage_logits
    assert heads._label_next_stage.resample and heads._label_next_stage.replaces_ground_truth
    assert (heads.batch_size_per_image, heads.positive_fraction) == (512, 0.25)
    stds = [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    for predictor, std in zip(heads.box_predictor, stds):
        assert predictor.box2box_transform.weights == pytest.approx(tuple(1 / s for s in std))
        assert predictor.smooth_l1_beta == 1.0
        assert (predictor.test_score_thresh, predictor.test_nms_thresh) == (0.05, 0.5)
    rpn = model.proposal_generator
    assert rpn.smooth_l1_beta == pytest.approx(1 / 9) and rpn.anchor_boundary_thresh == 0.0
    assert rpn.post_nms_topk == {True: 2000, False: 1000}
    assert model.input_format == "RGB"
    assert not model.backbone.bottom_up.stem.conv1.weight.requires_grad  # frozen_stages=1
    assert lazy.train.max_iter == round(12 * 118287 / 16)


def test_vitdet_config_shrunk_to_a_tiny_vit_trains_and_infers():
    """configs/cascade_mask_rcnn_vitdet_b_100ep.py with a 2-block ViT: one step, one inference."""
    lazy = _lazy("configs/cascade_mask_rcnn_vitdet_b_100ep.py")
    lazy.model.backbone.net.update(
        img_size=128,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=4,
        window_block_indexes=[0],
        drop_path_rate=0.0,
    )
    lazy.model.backbone.update(square_pad=128, out_channels=32)
    lazy.model.proposal_generator.head.in_channels = 32
    heads = lazy.model.roi_heads
    heads.num_classes = 3
    heads.batch_size_per_image = 32
    for head in heads.box_heads:
        head.update(
            input_shape=ShapeSpec(channels=32, height=7, width=7), conv_dims=[16] * 4, fc_dims=[64]
        )
    for predictor in heads.box_predictors:
        predictor.input_shape = ShapeSpec(channels=64)
    heads.mask_head.input_shape = ShapeSpec(channels=32, height=14, width=14)
    heads.mask_head.conv_dims = [16, 16]
    torch.manual_seed(0)
    model = instantiate(lazy.model)
    assert type(model.roi_heads) is CascadeRCNNROIHeads
    lazy.optimizer.params.model = model
    optimizer = instantiate(lazy.optimizer)
    batch = synthetic_batch(with_masks=True, sizes=((128, 128), (96, 128)))
    model.train()
    with EventStorage():
        losses = model(batch)
    assert {f"loss_cls_stage{k}" for k in range(3)} <= losses.keys() and "loss_mask" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    with torch.no_grad():
        outputs = model.eval()(batch)
    assert len(outputs) == 2 and all(o["instances"].has("pred_masks") for o in outputs)
