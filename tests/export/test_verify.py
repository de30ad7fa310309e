"""Differences (verify.py): the comparison of exported detections with eager ones."""

from projects.cascade.export import Differences
from tests.helpers import build, eager_inference, noise, tiny_export_cfg


def test_differences_flags_each_kind_of_mismatch():
    """The comparison the other tests rely on must flag what is out of tolerance."""
    model = build(tiny_export_cfg(mask=True), seed=0).eval()
    eager = eager_inference(model, noise(128, 160, 0))
    outputs = {
        "pred_boxes": eager.pred_boxes.tensor.numpy(),
        "pred_classes": eager.pred_classes.numpy(),
        "pred_masks": eager.pred_masks.numpy(),
        "scores": eager.scores.numpy(),
    }

    def compare(changed_outputs):
        differences = Differences()
        differences.add("image", eager, changed_outputs)
        return differences

    # The same detections in another order (as near-equal scores may come out) are equal.
    order = [1, 0] + list(range(2, len(eager)))
    assert compare({k: v[order] for k, v in outputs.items()}).failures() == []

    for key, index, change, failure in [
        ("pred_boxes", (3, 1), 2e-3, "box_px difference 0.002 > 0.001"),
        ("scores", (0,), 2e-4, "score difference 0.0002 > 0.0001"),
        ("pred_masks", (2, 0, 5, 5), 2e-4, "mask difference 0.0002 > 0.0001"),
        ("pred_classes", (1,), 1, "detections without an exported one of their class"),
    ]:
        changed = {k: v.copy() for k, v in outputs.items()}
        changed[key][index] += change
        assert any(failure in f for f in compare(changed).failures()), (key, compare(changed))

    fewer = compare({k: v[1:] for k, v in outputs.items()})
    assert fewer.failures() == [
        f"different numbers of detections on image: {len(eager)} vs {len(eager) - 1}"
    ]
