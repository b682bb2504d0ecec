"""Read clips laid out as the authors' datasets are: ``ROOT/SCENE/images/*`` and ``ROOT/SCENE/masks/*``.

Frames and masks are paired by file stem (``00012.png`` with ``00012.png`` or ``00012.jpg``) and ordered
naturally (``2`` before ``10``). Frames are read by :func:`leakseg.io.frames.read_image_file`, exactly as a request's
image files are decoded (grey stays grey, colour stays RGB, 16 bit stays 16 bit). Masks are read as "non-zero" when stored as 0/1 and as ">= 128" otherwise, which also copes with JPEG
ringing around 0/255 masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from leakseg.io.frames import list_image_files, natural_key, read_image_file

PathLike = Union[str, Path]


def list_scenes(root: PathLike) -> List[Path]:
    """Scene folders under ``root`` (those with an ``images`` folder), in natural order."""
    root = Path(root)
    return sorted((d for d in root.iterdir() if (d / "images").is_dir()), key=natural_key)


def scene_frames(scene_dir: PathLike) -> List[Tuple[Path, Optional[Path]]]:
    """(image, mask or None) for every frame of a scene, in order."""
    scene_dir = Path(scene_dir)
    masks = {p.stem: p for p in list_image_files(scene_dir / "masks")}
    return [(p, masks.get(p.stem)) for p in list_image_files(scene_dir / "images")]


def read_mask(path: PathLike) -> np.ndarray:
    """A label image as bool H x W (a colour mask counts its brightest channel)."""
    arr = read_image_file(path)
    arr = arr.max(axis=-1) if arr.ndim == 3 else arr
    return arr > 0 if arr.max(initial=0) <= 1 else arr >= (128 if arr.dtype == np.uint8 else 32768)


def load_scene(scene_dir: PathLike) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(frames T x H x W [x 3] uint8/uint16, masks T x H x W bool) of one scene.

    ``masks`` is None when the scene has no ``masks`` folder (an unlabelled clip). If only some frames are
    labelled (IGS-Few keeps at most 30 per video) this raises; use :func:`scene_frames` to handle that.
    """
    pairs = scene_frames(scene_dir)
    if not pairs:
        raise FileNotFoundError(f"no images in {Path(scene_dir) / 'images'}")
    frames = np.stack([read_image_file(img) for img, _ in pairs])  # np.stack refuses mixed sizes
    if not (Path(scene_dir) / "masks").is_dir():
        return frames, None
    missing = [img.name for img, mask in pairs if mask is None]
    if missing:
        raise FileNotFoundError(f"{scene_dir}: no mask for {len(missing)} frame(s), e.g. {missing[0]}")
    masks = np.stack([read_mask(mask) for _, mask in pairs])
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"{scene_dir}: masks {masks.shape} do not match frames {frames.shape}")
    return frames, masks
