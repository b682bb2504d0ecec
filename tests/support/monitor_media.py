"""Test media for the monitor: synthetic infrared sequences and real video files written with PyAV.

The scene is a leak-free clip of leakseg's own synthetic generator; a *plume* is a cool, absorbing gas
cloud (darker than the scene, as gas looks in absorption-band IR cameras): a textured Gaussian blob
that drifts a little. (The tests do not rely on a model recognising it: see test_monitor_e2e.py.)
``leak_and_twin`` is the generator's own plume, for the tests with the default model
(test_monitor_default_model.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

H, W = 240, 320
BACKGROUND_SEED = 8
PLUME_AMPLITUDE = -60.0


def scene(n: int, seed: int = BACKGROUND_SEED) -> np.ndarray:
    from leakseg.synth import generate_clip

    frames, masks, _ = generate_clip(seed, frames=n, height=H, width=W, leak="none")
    assert not masks.any()
    return frames


def sequence(n: int, plume_frames: Sequence[int] = (), centre: Tuple[int, int] = (100, 80),
             seed: int = BACKGROUND_SEED, rng_seed: int = 0) -> np.ndarray:
    """n frames (uint8, H x W); frames in ``plume_frames`` carry a plume centred at ``centre`` (x, y)."""
    rng = np.random.default_rng(rng_seed)
    yy, xx = np.mgrid[:H, :W]
    out = scene(n, seed).astype(np.float32)
    plume = set(plume_frames)
    cx, cy = centre
    for i in range(n):
        if i in plume:
            blob = np.exp(-(((xx - cx - 3 * np.sin(i)) / 40.0) ** 2 + ((yy - cy) / 30.0) ** 2))
            out[i] += PLUME_AMPLITUDE * blob * (0.8 + 0.2 * rng.random((H, W)))
    return np.clip(out, 0, 255).astype(np.uint8)


def leak_and_twin(seed: int, n: int = 40) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict]:
    """A calm generator-v3 scene (every distractor off) in which a real plume leaks, then stops and clears
    (leak mode "burst"), its leak-free twin (the same scene, camera and noise, no gas) and the gas labels:
    (leak frames, twin frames, masks, meta)."""
    from leakseg.synth import CALM_EFFECTS, generate_clip

    calm = dict(frames=n, height=H, width=W, version=3, effects=CALM_EFFECTS)
    frames, masks, meta = generate_clip(seed, leak="burst", **calm)
    twin, none, _ = generate_clip(seed, leak="none", **calm)
    assert masks.any() and not none.any()
    return frames, twin, masks, meta


def recording_camera(name: str, source, **kw) -> Dict:
    """A monitor camera config that reads a video file completely: every frame, as fast as the model takes
    it, in clips of 8; ``kw`` adds or replaces keys."""
    return {"name": name, "source": str(source), "analysis_fps": None, "realtime": False, "clip_frames": 8, **kw}


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """A lossless FFV1/Matroska video (grey, 8 or 16 bit), so the decoded pixels are the written ones."""
    import av

    pix = "gray16le" if frames.dtype == np.uint16 else "gray"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=pix)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> List[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray() for f in container.decode(video=0)]
