from .mobilenet import MobileNetV2, build_mobilenetv2_fpn_backbone

__all__ = ["MobileNetV2", "build_mobilenetv2_fpn_backbone"]
