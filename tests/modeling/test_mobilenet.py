"""
The MobileNetV2 backbone reads no weights when built; torchvision's weights reach it through
convert_torchvision_weights and a checkpoint, each tensor unchanged and in its place.
"""

import torch
from torchvision.models import mobilenet_v2

from projects.cascade.modeling.backbone import MobileNetV2, convert_torchvision_weights


def _torchvision_state(seed):
    torch.manual_seed(seed)
    model = mobilenet_v2()
    for name, buffer in model.named_buffers():  # BatchNorm statistics as a trained model's
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
        elif "num_batches_tracked" in name:
            buffer.fill_(1431430)
    return model.eval(), model.state_dict()


def test_converted_weights_fill_the_backbone_exactly():
    torchvision_model, state = _torchvision_state(seed=3)
    backbone = MobileNetV2(freeze_at=2, out_features=["mb2", "mb3", "mb4", "mb5"])
    converted = convert_torchvision_weights(state, prefix="")
    backbone.load_state_dict(converted, strict=True)  # every key, on both sides
    own = backbone.state_dict()
    assert set(own) == set(converted)
    for name in converted:
        stage, index, rest = name.split(".", 2)
        assert torch.equal(own[name], state[f"features.{index}.{rest}"]), name
    # The same function as torchvision's layers (frozen BatchNorm rounds a little otherwise).
    x = torch.randn(1, 3, 64, 64)
    expected = torchvision_model.features[:18](x)
    assert torch.allclose(backbone(x)["mb5"], expected, atol=1e-4, rtol=1e-4)


def test_building_reads_no_weights():
    """Two builds from different seeds differ: nothing loaded weights into them."""
    torch.manual_seed(0)
    a = MobileNetV2(freeze_at=1, out_features=["mb5"]).state_dict()
    torch.manual_seed(1)
    b = MobileNetV2(freeze_at=1, out_features=["mb5"]).state_dict()
    assert not torch.equal(a["mb2.0.0.weight"], b["mb2.0.0.weight"])
