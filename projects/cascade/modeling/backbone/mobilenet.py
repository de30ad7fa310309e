"""torchvision's ImageNet MobileNetV2 as a detectron2 FPN backbone, for models that must train on a CPU."""

from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

# Slices of torchvision's `features` that end at strides 4, 8, 16 and 32.
_STAGES = {"mb2": (0, 4, 4), "mb3": (4, 7, 8), "mb4": (7, 14, 16), "mb5": (14, 18, 32)}


class MobileNetV2(Backbone):
    """
    The inverted-residual trunk, cut into four stages. BatchNorm is frozen: batches of
    a few images cannot estimate its statistics. Inputs must be normalized as for
    torchvision's ImageNet models (RGB, mean/std in MODEL.PIXEL_MEAN/STD).
    """

    def __init__(self, pretrained: bool, freeze_at: int, out_features):
        super().__init__()
        weights = MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained else None
        features = mobilenet_v2(weights=weights).features
        self.stage_names = list(_STAGES)
        for name, (start, end, _) in _STAGES.items():
            self.add_module(name, features[start:end])
        for name in self.stage_names[:freeze_at]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        unknown = set(out_features) - set(self.stage_names)
        if unknown:
            raise ValueError(
                f"MODEL.MOBILENET.OUT_FEATURES has unknown names {sorted(unknown)}; "
                f"choose from {self.stage_names}."
            )
        self._out_features = list(out_features)
        self._out_feature_strides = {n: s for n, (_, _, s) in _STAGES.items()}
        self._out_feature_channels = {
            n: getattr(self, n)[-1].out_channels for n in self.stage_names
        }

    def forward(self, x):
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = MobileNetV2(
        pretrained=cfg.MODEL.MOBILENET.PRETRAINED,
        freeze_at=cfg.MODEL.MOBILENET.FREEZE_AT,
        out_features=cfg.MODEL.MOBILENET.OUT_FEATURES,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
