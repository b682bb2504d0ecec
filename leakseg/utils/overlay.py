"""Draw a clip's leak masks over its frames, and write them as PNGs, a GIF or an MP4.

PIL and numpy only, so it works with the thin client. Infrared frames are often 16-bit or
float: they are shown through one 0.5-99.5 percentile stretch over the whole clip (not per
frame), so brightness stays comparable from frame to frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from leakseg.io.frames import clip_array_from, to_uint8_clip
from leakseg.schema import ClipResult

RGB = Tuple[int, int, int]

#: Suffixes that look like a file but are not written here: refuse them instead of making a folder.
_REFUSED_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".apng",
                     ".avi", ".mov", ".mkv", ".webm", ".json"}


def render_overlays(
    frames,
    result: ClipResult,
    *,
    color: RGB = (255, 80, 0),
    alpha: float = 0.45,
    outline_color: RGB = (255, 230, 0),
    outline_width: int = 1,
    label: bool = True,
) -> List[Image.Image]:
    """One RGB image per frame: the frame, its mask tinted ``color`` at ``alpha``, the mask's
    outline in ``outline_color``, and (``label``) the frame index and leak area in a corner.

    ``frames`` is anything :meth:`LeakSegClient.segment` accepts (see :func:`leakseg.io.frames.clip_array_from`);
    ``result`` must carry masks.
    """
    clip = clip_array_from(frames)
    masks = result.masks()
    if clip.shape[0] != masks.shape[0] or clip.shape[1:3] != masks.shape[1:]:
        raise ValueError(f"frames {clip.shape} do not match the result's masks {masks.shape}")
    view = to_uint8_rgb(clip)
    images = []
    for i, frame in enumerate(result.frames):
        rgb = tint(view[i], masks[i], color, alpha)
        rgb[outline(masks[i], outline_width)] = outline_color
        image = Image.fromarray(rgb)
        if label:
            _draw_label(image, _label_text(frame.index, frame.area_pixels, frame.area_fraction))
        images.append(image)
    return images


def write_overlays(images: Sequence[Image.Image], out: Union[str, Path], *, fps: float = 10.0) -> Path:
    """Write ``images`` as an animated GIF (``out`` ends with .gif), an MP4 (.mp4, needs
    imageio and imageio-ffmpeg) or a folder of ``frame_0000.png``... (anything else). Returns ``out``.
    """
    if not images:
        raise ValueError("no images to write")
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".gif":
        _write_gif(images, out, fps)
    elif suffix == ".mp4":
        _write_mp4(images, out, fps)
    elif suffix in _REFUSED_SUFFIXES:
        raise ValueError(f"cannot write overlays to {out}: give a folder, a .gif or an .mp4")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(out / f"frame_{i:04d}.png")
    return out


# -- pixels -----------------------------------------------------------------------------------------


def to_uint8_rgb(clip: np.ndarray) -> np.ndarray:
    """T x H x W x 3 uint8 view of a clip; non-uint8 clips are stretched by their 0.5/99.5 percentiles."""
    clip = np.stack(to_uint8_clip(list(clip)))  # the service's own clip-level rule
    if clip.ndim == 3:
        clip = np.repeat(clip[..., None], 3, axis=-1)
    return clip


def tint(rgb: np.ndarray, mask: np.ndarray, color: RGB, alpha: float) -> np.ndarray:
    """A copy of ``rgb`` with the mask's pixels blended towards ``color``."""
    out = rgb.copy()
    blended = (1.0 - alpha) * rgb[mask].astype(np.float32) + alpha * np.asarray(color, np.float32)
    out[mask] = blended.round().astype(np.uint8)
    return out


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion with a 3 x 3 cross, by shifting; outside the frame counts as background."""
    eroded = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        p = np.pad(eroded, 1, constant_values=False)
        eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return eroded


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The mask's border pixels, ``width`` deep: the mask XOR its erosion."""
    mask = np.asarray(mask, dtype=bool)
    return mask ^ erode(mask, width)


# -- text -------------------------------------------------------------------------------------------


def _label_text(index: int, area_pixels: int, area_fraction: float) -> str:
    if area_pixels <= 0:
        return f"#{index}  no leak"
    return f"#{index}  leak {area_pixels} px ({100 * area_fraction:.2f}%)"


def _draw_label(image: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(image)
    font = label_font(max(10, image.height // 24))
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))  # keeps the text readable on any frame
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)


def label_font(size: int) -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


# -- files ------------------------------------------------------------------------------------------


def _write_gif(images: Sequence[Image.Image], out: Path, fps: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = images
    # Note: Pillow merges consecutive identical frames; the labels keep overlay frames distinct.
    first.save(out, save_all=True, append_images=rest, duration=max(1, round(1000 / fps)), loop=0)


def _write_mp4(images: Sequence[Image.Image], out: Path, fps: float) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (imageio needs it for MP4; fail here with a clear message)
    except ImportError as exc:
        raise ImportError(
            "writing an MP4 needs imageio and imageio-ffmpeg: pip install 'leakseg[video]' "
            "(or write a .gif or a folder of PNGs instead)"
        ) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(str(out), fps=fps, codec="libx264", macro_block_size=2) as writer:
        for image in images:
            writer.append_data(_even(np.asarray(image.convert("RGB"))))


def _even(rgb: np.ndarray) -> np.ndarray:
    """Pad to even height and width: H.264 in yuv420p needs them (imageio would rescale instead)."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")

