"""A camera's ignored pixels: its ``ignore_mask`` image and its ``zones`` polygons, as one boolean mask.

Zones are polygons in pixels of the camera's frame (x to the right, y down, (0, 0) the top-left
pixel). They are rasterised with Pillow's ``ImageDraw.polygon`` with both fill and outline: a pixel
is inside a polygon when Pillow paints it, its edges included. Ignored are the pixels inside any
``ignore`` polygon, the non-zero pixels of the ``ignore_mask`` image, and, when a
``region_of_interest`` is given, every pixel outside it.

The frame size is known only once frames arrive, so :class:`IgnoreMask` builds the mask per frame
size, once. Zones or an image that do not fit the frames raise ``ValueError`` with the reason (the
monitor reports it as CAMERA_FAULT). :func:`draw_zones` shows the zones over a frame (``--draw-zones``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from leakseg.monitor.config import Zones
from leakseg.utils.overlay import RGB, outline, tint, to_uint8_rgb

#: How --draw-zones shows ignored pixels, ignore polygons and the region of interest.
IGNORED_TINT: RGB = (255, 0, 255)
IGNORED_ALPHA = 0.5
IGNORE_OUTLINE: RGB = (255, 255, 0)
REGION_OUTLINE: RGB = (0, 255, 0)


def polygon_mask(points: Sequence[Tuple[int, int]], height: int, width: int) -> np.ndarray:
    """An H x W boolean array, True where Pillow paints the polygon (interior and edges)."""
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in points], fill=1, outline=1)
    return np.asarray(image, dtype=bool)


def zones_ignored(zones: Zones, height: int, width: int) -> np.ndarray:
    """The pixels the zones ignore: inside any ignore polygon, or outside the region of interest."""
    ignored = np.zeros((height, width), dtype=bool)
    for polygon in zones.ignore:
        ignored |= polygon_mask(polygon, height, width)
    if zones.region_of_interest is not None:
        ignored |= ~polygon_mask(zones.region_of_interest, height, width)
    return ignored


def zones_outside(zones: Zones, height: int, width: int) -> Optional[str]:
    """Why the zones do not fit a frame of this size (a point outside it), or None when they fit."""
    named = [(f"ignore[{i}]", polygon) for i, polygon in enumerate(zones.ignore)]
    if zones.region_of_interest is not None:
        named.append(("region_of_interest", zones.region_of_interest))
    for name, polygon in named:
        for x, y in polygon:
            if x >= width or y >= height:
                return (f"zones -> {name}: point ({x}, {y}) is outside the {width}x{height} frame "
                        f"(x 0..{width - 1}, y 0..{height - 1}; drawn for another resolution?)")
    return None


class IgnoreMask:
    """One camera's ignored pixels per frame size: built on first use for a size, then reused."""

    def __init__(self, camera: str, image: Optional[np.ndarray] = None, zones: Optional[Zones] = None):
        self.camera = camera
        self.image = image
        self.zones = zones
        self._by_size: Dict[Tuple[int, int], np.ndarray] = {}

    def for_frame(self, height: int, width: int) -> np.ndarray:
        """H x W bool, True where ignored; ValueError naming the camera when it does not fit the frames."""
        size = (height, width)
        if size not in self._by_size:
            self._by_size[size] = self._build(height, width)
        return self._by_size[size]

    def _build(self, height: int, width: int) -> np.ndarray:
        ignored = np.zeros((height, width), dtype=bool)
        if self.image is not None:
            if self.image.shape != (height, width):
                raise ValueError(f"camera {self.camera}: ignore mask is {self.image.shape[1]}x"
                                 f"{self.image.shape[0]} but frames are {width}x{height}")
            ignored |= self.image
        if self.zones is not None:
            reason = zones_outside(self.zones, height, width)
            if reason is not None:
                raise ValueError(f"camera {self.camera}: {reason}")
            ignored |= zones_ignored(self.zones, height, width)
        return ignored


def draw_zones(frame: np.ndarray, ignore: Optional[IgnoreMask]) -> Image.Image:
    """The frame (stretched to 8 bits as in the overlays) with its ignored pixels tinted and every zone
    outlined: ignore polygons in yellow, the region of interest in green. ValueError when they do not fit."""
    height, width = frame.shape[:2]
    rgb = to_uint8_rgb(frame[None])[0]
    if ignore is None:
        return Image.fromarray(rgb)
    rgb = tint(rgb, ignore.for_frame(height, width), IGNORED_TINT, IGNORED_ALPHA)
    for polygon, color in _outlined(ignore.zones):
        rgb[outline(polygon_mask(polygon, height, width))] = color
    return Image.fromarray(rgb)


def _outlined(zones: Optional[Zones]) -> List[Tuple[Sequence[Tuple[int, int]], RGB]]:
    if zones is None:
        return []
    polygons = [(polygon, IGNORE_OUTLINE) for polygon in zones.ignore]
    if zones.region_of_interest is not None:
        polygons.append((zones.region_of_interest, REGION_OUTLINE))
    return polygons
