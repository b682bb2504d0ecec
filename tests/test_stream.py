"""The stream halves: each frame of a camera stream encoded once, each frame decoded once, and the masks the
clip graph gives for the same windows, exactly (8-bit frames), from exported archives of both formats."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from leakseg.inference import Predictor
from leakseg.inference.stream import KEEP, StreamPredictor
from leakseg.monitor.windows import Frame, WindowBuilder
from leakseg.schema import InputError


def frames_of(n: int, seed: int = 0, size=(40, 56), dtype=np.uint8):
    """``n`` textured frames that change a little from one to the next (masks differ between frames)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=size).astype(np.float32)
    top = 255 if dtype == np.uint8 else 16383
    scale = top / 255.0
    return [np.clip((base + 12 * np.sin(i + base / 30.0) + rng.normal(0, 4, size)) * scale, 0, top).astype(dtype)
            for i in range(n)]


def windows_of(frames, length):
    builder = WindowBuilder("cam", length)
    out = [w for i, f in enumerate(frames) if (w := builder.push(Frame(i, f, 0.0))) is not None]
    last = builder.flush()
    return out + ([last] if last is not None else [])


def windowed_masks(predictor: Predictor, frames, length):
    """What the clip graph reports per frame, window by window (the monitor's windows of ``length``)."""
    masks, scores = {}, {}
    for w in windows_of(frames, length):
        result = predictor.predict([f.pixels for f in w.frames])
        for i, f in enumerate(w.reported, start=w.first):
            masks[f.seq] = result.frames[i].mask.counts
            scores[f.seq] = result.frames[i].max_score
    return masks, scores


def streamed_masks(streams: StreamPredictor, frames, length, name="cam"):
    masks, scores = {}, {}
    for w in windows_of(frames, length):
        result = streams.predict(name, [f.pixels for f in w.frames], report=range(w.first, w.first + w.final))
        assert result.clip.frames == w.final == len(result.frames)
        for i, f in enumerate(w.reported):
            masks[f.seq] = result.frames[i].mask.counts
            scores[f.seq] = result.frames[i].max_score
    return masks, scores


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def archive(request, family_archive):
    return family_archive("jvlgs", request.param)


def test_archive_carries_checked_stream_halves(archive):
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("leakseg_manifest.json"))
        names = set(zf.namelist())
    stream = manifest["stream"]
    assert {stream["encoder_file"], stream["head_file"]} <= names
    assert stream["check"]["mask_iou"] > 0.999 and stream["check"]["relative_error"] < 1e-5


@pytest.mark.parametrize("length", [3, 8])
def test_each_frame_encoded_once_and_masks_equal_the_clip_graphs(archive, length):
    predictor = Predictor.from_archive(archive, device="cpu", stream=True)
    frames = frames_of(23)
    expected, expected_scores = windowed_masks(predictor, frames, 8)  # today's windows
    streams = StreamPredictor(predictor)
    got, got_scores = streamed_masks(streams, frames, length)
    assert got.keys() == expected.keys()
    assert got == expected  # the same RLE counts: the same masks, frame by frame
    assert np.allclose([got_scores[k] for k in sorted(got)], [expected_scores[k] for k in sorted(got)], atol=1e-5)
    assert streams.frames_encoded == len(frames)  # each frame once
    assert streams.frames_decoded == len(got)  # each reported frame once, nothing decoded to be discarded


def test_fgstp_streams_too(family_archive):
    predictor = Predictor.from_archive(family_archive("fgstp"), device="cpu", stream=True)
    frames = frames_of(10, seed=3)
    expected, _ = windowed_masks(predictor, frames, 8)
    got, _ = streamed_masks(StreamPredictor(predictor), frames, 3)
    assert got == expected


def test_streams_do_not_share_features_and_prompts_are_part_of_a_stream(archive):
    predictor = Predictor.from_archive(archive, device="cpu", stream=True)
    streams = StreamPredictor(predictor)
    a, b = frames_of(5, seed=1), frames_of(5, seed=2)
    streams.predict("a", a[:3], [0])
    streams.predict("b", b[:3], [0])
    streams.predict("a", a[1:4], [0])
    assert (streams.frames_encoded, streams.frames_reused) == (7, 2)
    # another prompt list changes every frame's features (the text is fused into them): nothing reused
    other = predictor.bank.prompts[-4:]  # the two extra prompts in place of two defaults
    result = streams.predict("a", a[2:5], [0], prompts=other)
    assert (streams.frames_encoded, streams.frames_reused) == (10, 2)
    assert result.model.prompts == other
    assert result.frames[0].mask.counts == predictor.predict(a[2:5], other).frames[0].mask.counts


def test_a_copy_of_a_frame_is_a_new_frame_and_memory_is_bounded(archive):
    predictor = Predictor.from_archive(archive, device="cpu", stream=True)
    streams = StreamPredictor(predictor, max_streams=2)
    frames = frames_of(4)
    streams.predict("a", frames[:3], [0])
    streams.predict("a", [f.copy() for f in frames[1:4]], [0])  # same values, other arrays: encoded again
    assert streams.frames_encoded == 6
    for name in "bcd":
        streams.predict(name, frames[:3], [0])
    assert len(streams._streams) == 2 and all(len(s.seen) <= KEEP for s in streams._streams.values())


def test_sixteen_bit_frames_stream_with_each_windows_stretch(archive):
    """More than 8 bits: each frame keeps the stretch of the window it arrived in, so the masks are not the
    clip graph's bit for bit, but close."""
    predictor = Predictor.from_archive(archive, device="cpu", stream=True)
    frames = frames_of(14, seed=4, dtype=np.uint16)
    expected, _ = windowed_masks(predictor, frames, 3)
    streams = StreamPredictor(predictor)
    got, _ = streamed_masks(streams, frames, 3)
    assert streams.frames_encoded == len(frames)
    from leakseg.utils.rle import decode_rle

    size = list(frames[0].shape)
    inter = union = 0
    for seq in expected:
        m1 = decode_rle({"size": size, "counts": expected[seq]})
        m2 = decode_rle({"size": size, "counts": got[seq]})
        inter += (m1 & m2).sum()
        union += (m1 | m2).sum()
    assert union and inter / union > 0.9


def test_bad_windows_are_input_errors(archive):
    streams = StreamPredictor(Predictor.from_archive(archive, device="cpu", stream=True))
    frames = frames_of(3)
    for report in ([], [3], [0, 0], [-1]):
        with pytest.raises(InputError):
            streams.predict("a", frames, report)
    with pytest.raises(InputError):
        streams.predict("a", frames[:2], [0])  # a window needs a triplet
    with pytest.raises(InputError):
        streams.predict("a", frames, [0], options={"threshold": 7})


def test_an_archive_without_stream_halves_says_so(tmp_path, family_checkpoint):
    from leakseg.export.exporter import ExportOptions, export_archive

    mar = export_archive(ExportOptions(checkpoint=family_checkpoint("fgstp"), name="flat", output_dir=tmp_path,
                                       stream=False))
    predictor = Predictor.from_archive(mar, device="cpu", stream=True)
    assert predictor.manifest.stream is None and predictor.stream is None
    with pytest.raises(ValueError, match="no stream halves"):
        StreamPredictor(predictor)
