"""Cutting an annotated image into tiles: which boxes a tile keeps, in its coordinates."""

from typing import List, Sequence

__all__ = ["clip_boxes_to_tile"]


def clip_boxes_to_tile(
    boxes: Sequence[Sequence[float]],
    x0: float,
    y0: float,
    tile_w: float,
    tile_h: float,
    min_visible: float,
) -> List[List[float]]:
    """
    Clip image-space XYXY boxes to the tile at (x0, y0) of size tile_w x tile_h.

    Returns the boxes that keep more than ``min_visible`` of their area, in tile
    coordinates. Degenerate boxes (zero width or height) are dropped.
    """
    kept = []
    for bx0, by0, bx1, by1 in boxes:
        area = (bx1 - bx0) * (by1 - by0)
        cx0, cy0 = max(bx0, x0), max(by0, y0)
        cx1, cy1 = min(bx1, x0 + tile_w), min(by1, y0 + tile_h)
        if area <= 0 or cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) > min_visible * area:
            kept.append([cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0])
    return kept
