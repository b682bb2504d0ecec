"""Data: the synthetic clip generator and a reader for the SCENE/images, SCENE/masks layout.

Pure numpy and pillow, so it works with the thin client install.
"""

from leakseg.data.dataset import list_scenes, load_scene
from leakseg.data.synth import generate_clip, simulate_clip, write_dataset

__all__ = ["generate_clip", "list_scenes", "load_scene", "simulate_clip", "write_dataset"]
