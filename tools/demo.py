#!/usr/bin/env python
"""
Draw a model's detections on images, a folder or a video, as detectron2's demo does.

    python tools/demo.py --config-file configs/trees/cascade_rcnn_trees.yaml \
        --input datasets/trees/images/*x0000_y0000.png --output out/ --stages \
        --opts MODEL.WEIGHTS output/trees/cascade_rcnn/model_final.pth

For each image it writes <output>/<name> with the final detections. `--stages` adds
<output>/<stem>_stages.png: for the top detections, the proposal each started from and
the box every stage of the cascade made of it, one colour per stage, so the refinement
can be seen; it prints how far each stage moved their edges. `--video-input` writes the
video with the detections drawn on every frame.
"""

import argparse
import glob
import os
from pathlib import Path

import cv2
import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from projects.cascade.config_loader import load_config
from projects.cascade.demo import register_demo
from projects.cascade.engine.predictor import SafePredictor
from projects.cascade.modeling.stage_outputs import CascadeStageOutputs

PROPOSAL_COLOUR = (0.6, 0.6, 0.6)
STAGE_COLOURS = (
    (0.12, 0.47, 0.71),
    (1.0, 0.5, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.4, 0.74),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", default=[], help="images, globs or folders")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", required=True, help="a folder (or, for a video, a .mp4 file)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--stages", action="store_true", help="also draw each stage's boxes")
    parser.add_argument("--stages-topk", type=int, default=12, help="detections in the stage view")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    if not args.input and not args.video_input:
        parser.error("give --input or --video-input")
    return args


def input_paths(patterns):
    """Image files named directly, by a glob, or as a folder (its files, sorted)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(p for p in glob.glob(os.path.join(pattern, "*")) if os.path.isfile(p))
            continue
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern}: no such file")
        paths += found
    return paths


def draw_detections(image_rgb, instances, metadata):
    return Visualizer(image_rgb, metadata).draw_instance_predictions(instances.to("cpu"))


def draw_stages(image_rgb, instances, top_k, scale=2.0):
    """
    For the `top_k` highest-scoring detections: the proposal (grey, dashed) and the box each
    stage regressed from it (`stage_boxes`, one colour per stage; the last one solid).
    """
    instances = instances.to("cpu")
    top = instances.scores.argsort(descending=True)[:top_k]
    stage_boxes = instances.stage_boxes[top]  # detections x (1 + stages) x 4
    num_stages = stage_boxes.shape[1] - 1
    v = Visualizer(image_rgb, None, scale=scale)
    for boxes in stage_boxes.tolist():
        v.draw_box(boxes[0], alpha=0.9, edge_color=PROPOSAL_COLOUR, line_style="--")
        for k, box in enumerate(boxes[1:]):
            last = k == num_stages - 1
            style = "-" if last else "--"
            v.draw_box(box, alpha=0.9, edge_color=_stage_colour(k), line_style=style)
    labels = [("proposal", PROPOSAL_COLOUR)] + [
        (f"stage {k + 1}", _stage_colour(k)) for k in range(num_stages)
    ]
    font_size = 7
    for i, (label, colour) in enumerate(labels):
        position = (4, 4 + i * font_size * 2.2)
        v.draw_text(label, position, color=colour, horizontal_alignment="left", font_size=font_size)
    return v.output


def stage_movements(instances, top_k):
    """
    For the `top_k` highest-scoring detections, how far each stage moves a box edge from
    the box it was given: [(mean px, max px)] per stage, over the detections' four edges.
    """
    top = instances.scores.argsort(descending=True)[:top_k]
    stage_boxes = instances.stage_boxes[top].cpu()
    moves = (stage_boxes[:, 1:] - stage_boxes[:, :-1]).abs()  # detections x stages x 4
    return [(m.mean().item(), m.max().item()) for m in moves.unbind(1)]


def _stage_colour(k):
    return STAGE_COLOURS[k % len(STAGE_COLOURS)]


def run_images(predictor, metadata, paths, output, args):
    os.makedirs(output, exist_ok=True)
    for path in paths:
        image_bgr = read_image(path, format="BGR")
        prediction = predictor(image_bgr)
        instances = prediction["instances"]
        out_path = os.path.join(output, os.path.basename(path))
        draw_detections(image_bgr[:, :, ::-1], instances, metadata).save(out_path)
        print(f"{path}: {len(instances)} detections -> {out_path}")
        if args.stages:
            stages_path = os.path.join(output, Path(path).stem + "_stages.png")
            draw_stages(image_bgr[:, :, ::-1], instances, args.stages_topk).save(stages_path)
            print(f"{path}: stages of the top {args.stages_topk} -> {stages_path}")
            for k, (mean, most) in enumerate(stage_movements(instances, args.stages_topk)):
                print(
                    f"  stage {k + 1} moves a box edge {mean:.1f} px on average, "
                    f"at most {most:.1f} px"
                )


def run_video(predictor, metadata, path, output):
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise FileNotFoundError(f"--video-input {path}: cannot be opened as a video")
    fps = video.get(cv2.CAP_PROP_FPS) or 25
    size = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if output.endswith(".mp4"):
        out_path = output
    else:
        out_path = os.path.join(output, Path(path).stem + ".mp4")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames = 0
    while True:
        ok, frame_bgr = video.read()
        if not ok:
            break
        instances = predictor(frame_bgr)["instances"]
        drawn = draw_detections(frame_bgr[:, :, ::-1], instances, metadata).get_image()
        writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
        frames += 1
    video.release()
    writer.release()
    print(f"{path}: {frames} frames -> {out_path}")


def main(argv=None):
    args = parse_args(argv)
    threshold = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold)]
    register_demo()
    cfg = load_config(args.config_file, list(args.opts) + threshold)
    predictor = SafePredictor(cfg)
    if args.stages:
        # The same single pass, which also returns every stage's box of each detection.
        predictor.model = CascadeStageOutputs(predictor.model)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if args.input:
        run_images(predictor, metadata, input_paths(args.input), args.output, args)
    if args.video_input:
        run_video(predictor, metadata, args.video_input, args.output)


if __name__ == "__main__":
    main()
