from .mobilenet import (
    IMAGENET_WEIGHTS,
    MobileNetV2,
    add_mobilenet_config,
    build_mobilenetv2_fpn_backbone,
    convert_torchvision_weights,
)

__all__ = [
    "IMAGENET_WEIGHTS",
    "MobileNetV2",
    "add_mobilenet_config",
    "build_mobilenetv2_fpn_backbone",
    "convert_torchvision_weights",
]
