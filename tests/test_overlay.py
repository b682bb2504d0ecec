"""leakseg.utils.overlay: tint, outline, label, the 16-bit stretch, and the three output kinds."""

import sys

import numpy as np
import pytest
from PIL import Image

from leakseg.utils.overlay import erode, outline, render_overlays, to_uint8_rgb, write_overlays
from leakseg.schema import ClipInfo, ClipResult, FrameResult, ModelInfo, RLEMask
from leakseg.utils.rle import encode_rle

T, H, W = 4, 48, 64


def result_for(masks: np.ndarray, with_masks: bool = True) -> ClipResult:
    t, h, w = masks.shape
    frames = [FrameResult(index=i, leak=bool(m.any()), area_pixels=int(m.sum()), area_fraction=float(m.mean()),
                          max_score=0.9, mask=RLEMask(**encode_rle(m)) if with_masks else None)
              for i, m in enumerate(masks)]
    leak = [i for i, m in enumerate(masks) if m.any()]
    return ClipResult(model=ModelInfo(name="jvlgs", version="1", prompts=["gas"]),
                      clip=ClipInfo(frames=t, height=h, width=w, leak_detected=bool(leak), leak_frames=leak,
                                    max_leak_fraction=float(masks.mean(axis=(1, 2)).max())),
                      frames=frames)


@pytest.fixture
def clip_and_result():
    frames = np.full((T, H, W), 100, np.uint8)
    masks = np.zeros((T, H, W), bool)
    for i in range(1, T):  # frame 0 has no leak
        masks[i, 20:40, 10 + 5 * i : 40 + 5 * i] = True
    return frames, masks, result_for(masks)


def test_mask_pixels_are_tinted_and_outlined(clip_and_result):
    frames, masks, result = clip_and_result
    images = render_overlays(frames, result, label=False, color=(255, 0, 0), alpha=0.5, outline_color=(0, 255, 0))
    assert len(images) == T and all(im.mode == "RGB" and im.size == (W, H) for im in images)
    rgb = np.asarray(images[2])
    edge = outline(masks[2])
    inside = masks[2] & ~edge
    assert inside.any() and edge.any()
    np.testing.assert_array_equal(rgb[inside], np.tile([178, 50, 50], (inside.sum(), 1)))  # 0.5*100 + 0.5*255
    np.testing.assert_array_equal(rgb[edge], np.tile([0, 255, 0], (edge.sum(), 1)))
    np.testing.assert_array_equal(rgb[~masks[2]], np.full(((~masks[2]).sum(), 3), 100))
    np.testing.assert_array_equal(np.asarray(images[0]), np.full((H, W, 3), 100))  # no leak: untouched


def test_label_is_drawn(clip_and_result):
    frames, _, result = clip_and_result
    plain = np.asarray(render_overlays(frames, result, label=False)[1])
    labelled = np.asarray(render_overlays(frames, result, label=True)[1])
    corner = (slice(0, 8), slice(0, 30))
    assert (labelled[corner] != plain[corner]).any()
    assert (labelled[-5:, -5:] == plain[-5:, -5:]).all()  # far from the label: unchanged


def test_outline_is_mask_xor_erosion():
    mask = np.zeros((7, 9), bool)
    mask[1:6, 2:8] = True
    ring = outline(mask)
    assert ring.sum() == mask.sum() - 3 * 4  # a 5 x 6 block minus its 3 x 4 interior
    assert not ring[2:5, 3:7].any() and ring[1, 2] and ring[5, 7]
    full = np.ones((3, 4), bool)
    assert outline(full).sum() == 3 * 4 - 2  # the frame border counts as background
    assert not erode(np.zeros((3, 3), bool)).any()
    assert outline(mask, width=2).sum() == mask.sum() - 1 * 2


def test_16_bit_frames_are_stretched_over_the_whole_clip():
    clip = np.zeros((2, 10, 10), np.uint16)
    clip[0] = np.linspace(1000, 2000, 100).reshape(10, 10)
    clip[1] = 1500
    view = to_uint8_rgb(clip)
    assert view.dtype == np.uint8 and view.shape == (2, 10, 10, 3)
    assert view[0].min() == 0 and view[0].max() == 255
    assert 100 < view[1, 0, 0, 0] < 155  # the clip-wide stretch puts 1500 mid-grey, not black
    floats = to_uint8_rgb(np.array([[[np.nan, 0.0], [1.0, 2.0]]], np.float32))
    assert floats[0, 0, 0, 0] == 0 and floats[0, 1, 1, 0] == 255


def test_overlays_of_16_bit_frames(clip_and_result):
    _, masks, result = clip_and_result
    frames16 = (np.random.default_rng(0).random((T, H, W)) * 60000).astype(np.uint16)
    images = render_overlays(frames16, result)
    assert len(images) == T and images[0].mode == "RGB"


def test_gif_has_one_frame_per_input(tmp_path, clip_and_result):
    frames, _, result = clip_and_result
    out = write_overlays(render_overlays(frames, result), tmp_path / "sub" / "overlay.gif", fps=5)
    with Image.open(out) as gif:
        assert gif.n_frames == T and gif.info["duration"] == 200


def test_png_folder_has_one_file_per_frame(tmp_path, clip_and_result):
    frames, _, result = clip_and_result
    images = render_overlays(frames, result)
    folder = write_overlays(images, tmp_path / "overlays")
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"frame_{i:04d}.png" for i in range(T)]
    np.testing.assert_array_equal(np.asarray(Image.open(files[2])), np.asarray(images[2]))


def test_mp4_without_imageio_ffmpeg_is_a_clear_error(tmp_path, clip_and_result, monkeypatch):
    frames, _, result = clip_and_result
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    with pytest.raises(ImportError, match=r"leakseg\[video\]"):
        write_overlays(render_overlays(frames, result), tmp_path / "overlay.mp4")


def test_mp4_when_available(tmp_path, clip_and_result):
    pytest.importorskip("imageio_ffmpeg")
    frames, _, result = clip_and_result
    out = write_overlays(render_overlays(frames, result), tmp_path / "overlay.mp4")
    assert out.stat().st_size > 0


def test_refusals(tmp_path, clip_and_result):
    frames, masks, result = clip_and_result
    with pytest.raises(ValueError, match="folder, a .gif or an .mp4"):
        write_overlays(render_overlays(frames, result), tmp_path / "overlay.png")
    with pytest.raises(ValueError, match="do not match"):
        render_overlays(frames[:, :10], result)
    with pytest.raises(ValueError, match="return_masks"):
        render_overlays(frames, result_for(masks, with_masks=False))
    with pytest.raises(ValueError, match="no images"):
        write_overlays([], tmp_path / "x.gif")


def test_frames_as_files(tmp_path, clip_and_result):
    frames, _, result = clip_and_result
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(paths[-1])
    assert len(render_overlays(paths, result)) == T
    assert len(render_overlays(tmp_path, result)) == T
