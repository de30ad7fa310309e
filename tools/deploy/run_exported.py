#!/usr/bin/env python
"""
Run a model exported by tools/deploy/export_model.py on image files, without detectron2.
This file is what a deployment ships next to model.onnx or model.ts:

    python tools/deploy/run_exported.py output/export/trees/model.onnx image.png [more.png ...]
    python tools/deploy/run_exported.py model.ts image.png --draw out/ --min-score 0.5

It prints one line per detection (class, score, box in the original image's pixels, and the
mask's area for Mask R-CNN); --draw writes each image with its detections drawn.

It needs numpy and Pillow, plus onnxruntime for .onnx or torch and torchvision for .ts
(the TorchScript graph calls torchvision's nms and roi_align). It reproduces what
detectron2 does around the model: DefaultPredictor's image reading and test-time resize
before, detector_postprocess after (boxes scaled back to the original image and clipped,
empty boxes dropped, masks pasted at the original resolution). The exported file carries
the settings for this (see projects/cascade/export/exporter.py).
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageOps

METADATA_KEY = "detectron2_export"


class ExportedDetector:
    """An exported model plus detectron2's pre- and post-processing, on RGB uint8 images."""

    def __init__(self, path, num_threads=None):
        if path.endswith(".onnx"):
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
            metadata = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            input_name = session.get_inputs()[0].name
            self._run = lambda image: session.run(None, {input_name: image})
        elif path.endswith(".ts"):
            import torch
            import torchvision  # noqa: F401  (registers torchvision::nms and roi_align)

            if num_threads:
                torch.set_num_threads(num_threads)
            files = {METADATA_KEY: ""}
            module = torch.jit.load(path, _extra_files=files)
            metadata = files[METADATA_KEY]

            def run(image):
                with torch.no_grad():
                    return [x.numpy() for x in module(torch.from_numpy(image))]

            self._run = run
        else:
            raise ValueError(f"{path}: expected a .onnx (ONNX) or .ts (TorchScript) file.")
        if not metadata:
            raise ValueError(
                f"{path} has no '{METADATA_KEY}' metadata (input format, resize, output names): "
                "export it with tools/deploy/export_model.py."
            )
        self.metadata = json.loads(metadata)
        if self.metadata["input_format"] not in ("RGB", "BGR"):
            raise ValueError(f"{path}: unsupported input format {self.metadata['input_format']}.")

    @property
    def class_names(self):
        return self.metadata["class_names"]

    def __call__(self, rgb):
        """
        Args:
            rgb: uint8 array (H, W, 3), as `read_rgb` returns.
        Returns:
            dict with "boxes" float32 (N, 4) XYXY in the image's pixels, "scores" (N,),
            "classes" int64 (N,), and for Mask R-CNN "masks" bool (N, H, W).
        """
        height, width = rgb.shape[:2]
        image = resize_shortest_edge(
            rgb, self.metadata["min_size_test"], self.metadata["max_size_test"]
        )
        if self.metadata["input_format"] == "BGR":
            image = image[:, :, ::-1]
        image = np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1))
        outputs = dict(zip(self.metadata["outputs"], self._run(image)))
        return postprocess(outputs, height, width, self.metadata["mask_threshold"])


def read_rgb(path):
    """The image as detectron2's read_image reads it: EXIF orientation applied, RGB uint8."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def resize_shortest_edge(image, short_edge, max_size):
    """detectron2's test-time ResizeShortestEdge: PIL bilinear; a short edge of 0 keeps the size."""
    if short_edge == 0:
        return image
    h, w = image.shape[:2]
    scale = short_edge / min(h, w)
    newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    newh, neww = int(newh + 0.5), int(neww + 0.5)
    if (newh, neww) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))


def postprocess(outputs, height, width, mask_threshold):
    """detectron2's detector_postprocess, from the model's input size to (height, width)."""
    in_h, in_w = (int(x) for x in outputs["image_size"])
    boxes = outputs["pred_boxes"].copy()
    boxes[:, 0::2] *= np.float32(width / in_w)
    boxes[:, 1::2] *= np.float32(height / in_h)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {
        "boxes": boxes[keep],
        "scores": outputs["scores"][keep],
        "classes": outputs["pred_classes"][keep],
    }
    if "pred_masks" in outputs:
        result["masks"] = paste_masks(
            outputs["pred_masks"][keep, 0], result["boxes"], height, width, mask_threshold
        )
    return result


def paste_masks(masks, boxes, height, width, threshold):
    """
    detectron2's paste_masks_in_image on a CPU, in numpy: each (M, M) mask probability map is
    resampled bilinearly (grid_sample, align_corners=False, zeros outside) onto its box,
    within the box's bounds plus one pixel, then thresholded (>=).
    """
    pasted = np.zeros((len(masks), height, width), dtype=bool)
    for mask, box, out in zip(masks, boxes, pasted):
        x0, y0, x1, y1 = box.astype(np.float32)
        left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        size = mask.shape[-1]
        ix = _to_mask_coordinates(np.arange(left, right, dtype=np.float32), x0, x1, size)
        iy = _to_mask_coordinates(np.arange(top, bottom, dtype=np.float32), y0, y1, size)
        out[top:bottom, left:right] = _bilinear(mask, iy, ix) >= threshold
    return pasted


def _to_mask_coordinates(pixels, start, end, size):
    """
    Image pixels to mask coordinates, in float32 and in the order detectron2 and torch's CPU
    grid_sample compute them (the last bit can still differ where torch fuses a multiply-add).
    """
    one, two = np.float32(1), np.float32(2)
    grid = (pixels + np.float32(0.5) - start) / (end - start) * two - one  # _do_paste_mask
    return (grid + one) * np.float32(size / 2) - np.float32(0.5)  # grid_sample, align_corners=False


def _bilinear(image, iy, ix):
    """`image` sampled at every (iy[i], ix[j]) bilinearly, with zeros outside, as torch does."""
    x_w, y_n = np.floor(ix), np.floor(iy)
    w, n = ix - x_w, iy - y_n
    e, s = np.float32(1) - w, np.float32(1) - n
    # A border of zeros: every index below 0 or above M-1 is clipped onto it.
    padded = np.pad(image, 1)
    size = image.shape[0]

    def index(i):
        return np.clip(i, -1, size) + 1

    x_w, y_n = x_w.astype(np.int64), y_n.astype(np.int64)
    x_w, x_e, y_n, y_s = index(x_w), index(x_w + 1), index(y_n), index(y_n + 1)
    return (
        padded[y_n[:, None], x_w] * (s[:, None] * e)
        + padded[y_n[:, None], x_e] * (s[:, None] * w)
        + padded[y_s[:, None], x_w] * (n[:, None] * e)
        + padded[y_s[:, None], x_e] * (n[:, None] * w)
    )


def draw(rgb, detections, class_names, min_score):
    """The image with boxes, labels and (half-transparent) masks of detections >= min_score."""
    image = Image.fromarray(rgb).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    painter = ImageDraw.Draw(overlay)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]
    for i in np.flatnonzero(detections["scores"] >= min_score):
        color = palette[int(detections["classes"][i]) % len(palette)]
        if "masks" in detections:
            mask = Image.fromarray(detections["masks"][i].astype(np.uint8) * 255)
            overlay.paste(color + (96,), (0, 0), mask)
        painter.rectangle(
            [float(v) for v in detections["boxes"][i]], outline=color + (255,), width=2
        )
        label = f"{class_names[int(detections['classes'][i])]} {detections['scores'][i]:.2f}"
        x0, y0 = (float(v) for v in detections["boxes"][i][:2])
        painter.text((x0 + 2, y0 + 1), label, fill=color + (255,))
    return Image.alpha_composite(image, overlay).convert("RGB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model", help="model.onnx or model.ts written by tools/deploy/export_model.py"
    )
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--min-score", type=float, default=0.0, help="print and draw only these")
    parser.add_argument("--draw", metavar="DIR", help="write each image with its detections here")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime")
    args = parser.parse_args(argv)

    detector = ExportedDetector(args.model, args.threads)
    for path in args.images:
        rgb = read_rgb(path)
        detections = detector(rgb)
        shown = np.flatnonzero(detections["scores"] >= args.min_score)
        print(f"{path}: {len(shown)} detections")
        for i in shown:
            x0, y0, x1, y1 = detections["boxes"][i]
            line = (
                f"  {detector.class_names[int(detections['classes'][i])]:<12} "
                f"{detections['scores'][i]:.4f}  [{x0:.2f}, {y0:.2f}, {x1:.2f}, {y1:.2f}]"
            )
            if "masks" in detections:
                line += f"  mask {int(detections['masks'][i].sum())} px"
            print(line)
        if args.draw:
            os.makedirs(args.draw, exist_ok=True)
            out = os.path.join(args.draw, os.path.splitext(os.path.basename(path))[0] + ".png")
            draw(rgb, detections, detector.class_names, args.min_score).save(out)
            print(f"  drawn: {out}")


if __name__ == "__main__":
    sys.exit(main())
