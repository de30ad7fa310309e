"""
The soak's inference phase: the trained tiny model in eval mode, called on the real
trees_val tiles in turn, as `inference_on_dataset` calls it (no gradients, one image per
call, outputs dropped after use).
"""

import torch

from soak_windows import WindowRecorder
from workloads import tree_inputs

# All ten trees_val tiles, mapped once at the test size of the soak's config: the loop
# then measures the model alone (the training phase covers the data loading), and a
# window of a multiple of ten calls holds the same work as every other.
NUM_TILES = 10


def run_inference_soak(model, cfg, calls, window):
    """Return (the windows, the mean number of detections per call)."""
    inputs = tree_inputs(cfg, "trees_val", NUM_TILES, is_train=False)
    model.eval()
    recorder = WindowRecorder(window)
    detections = 0
    with torch.no_grad():
        recorder.start()
        for call in range(calls):
            outputs = model([inputs[call % len(inputs)]])
            detections += len(outputs[0]["instances"])
            recorder.step_done()
    return recorder.windows, detections / calls
