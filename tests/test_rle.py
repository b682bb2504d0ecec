"""leakseg.utils.rle (pure numpy) against pycocotools, the reference the API promises compatibility with."""

import numpy as np
import pytest

from leakseg.schema import ClipInfo, ClipResult, FrameResult, ModelInfo, RLEMask
from leakseg.utils.rle import decode_rle, encode_rle

mask_util = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0.x predates numpy 2's __array__(copy=...) protocol; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = [(1, 1), (1, 17), (17, 1), (7, 13), (480, 640), (2, 2), (31, 8)]


def coco_encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def masks_for(shape, rng):
    h, w = shape
    yield np.zeros(shape, bool)
    yield np.ones(shape, bool)
    for density in (0.05, 0.5, 0.95):
        yield rng.random(shape) < density
    blob = np.zeros(shape, bool)
    blob[h // 4 : max(h // 4 + 1, 3 * h // 4), w // 3 : max(w // 3 + 1, 2 * w // 3)] = True
    yield blob
    corner = np.zeros(shape, bool)
    corner[-1, -1] = True
    yield corner
    first = np.zeros(shape, bool)
    first[0, 0] = True
    yield first


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_encode_matches_pycocotools(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in masks_for(shape, rng):
        assert encode_rle(mask) == coco_encode(mask)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_decode_matches_pycocotools(shape):
    rng = np.random.default_rng(1000 + sum(shape))
    for mask in masks_for(shape, rng):
        ours = decode_rle(coco_encode(mask))
        assert ours.dtype == bool and ours.shape == shape
        np.testing.assert_array_equal(ours, mask)
        theirs = mask_util.decode({"size": list(shape), "counts": encode_rle(mask)["counts"].encode()})
        np.testing.assert_array_equal(theirs.astype(bool), mask)


def test_long_runs_and_negative_deltas_round_trip():
    # Large run lengths need several 5-bit groups; alternating long/short runs give negative deltas.
    mask = np.zeros((480, 640), bool)
    mask[:, 100:101] = True
    mask[:, 300:600] = True
    mask[200:201, :] = True
    assert encode_rle(mask) == coco_encode(mask)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)


def test_decode_accepts_bytes_and_uncompressed_counts():
    mask = np.random.default_rng(3).random((9, 5)) < 0.4
    rle = coco_encode(mask)
    np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    flat = mask.T.ravel()
    runs, current, n = [], False, 0
    for v in flat:
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    runs.append(n)
    np.testing.assert_array_equal(decode_rle({"size": [9, 5], "counts": runs}), mask)


def test_decode_rejects_counts_of_the_wrong_size():
    rle = encode_rle(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="expected 20"):
        decode_rle({"size": [4, 5], "counts": rle["counts"]})


@pytest.mark.parametrize("counts", [
    "é",            # not ASCII
    "3[",           # a continued group that never ends
    "PPPPPPP0",     # a group of 8 characters: a run longer than any frame
    "9" * 200,      # more runs than pixels
    "", "0",        # runs that cover too few pixels
])
def test_decode_refuses_counts_that_do_not_describe_the_mask(counts):
    """Whatever a peer sends as counts, decoding gives the mask or a ValueError, never another exception."""
    with pytest.raises(ValueError):
        decode_rle({"size": [8, 12], "counts": counts})


def test_decode_refuses_negative_runs():
    with pytest.raises(ValueError):
        decode_rle({"size": [2, 2], "counts": [6, -2]})


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 3, 4), bool))


def _result(masks, with_masks=True) -> ClipResult:
    t, h, w = masks.shape
    frames = [
        FrameResult(
            index=i, leak=bool(m.any()), area_pixels=int(m.sum()), area_fraction=float(m.mean()),
            max_score=0.9, mask=RLEMask(**encode_rle(m)) if with_masks else None,
        )
        for i, m in enumerate(masks)
    ]
    leak = [i for i, m in enumerate(masks) if m.any()]
    return ClipResult(
        model=ModelInfo(name="jvlgs", version="1", prompts=["gas"]),
        clip=ClipInfo(frames=t, height=h, width=w, leak_detected=bool(leak), leak_frames=leak,
                      max_leak_fraction=float(masks.mean(axis=(1, 2)).max())),
        frames=frames,
    )


def test_clip_result_masks_round_trip_through_json():
    masks = np.random.default_rng(7).random((4, 7, 13)) < 0.3
    masks[1] = False
    result = ClipResult.model_validate_json(_result(masks).model_dump_json())
    decoded = result.masks()
    assert decoded.shape == (4, 7, 13) and decoded.dtype == bool
    np.testing.assert_array_equal(decoded, masks)
    # Each stored mask is what pycocotools would decode too.
    for frame, mask in zip(result.frames, masks):
        coco = mask_util.decode({"size": frame.mask.size, "counts": frame.mask.counts.encode()})
        np.testing.assert_array_equal(coco.astype(bool), mask)


def test_clip_result_masks_without_masks_raises():
    with pytest.raises(ValueError, match="return_masks"):
        _result(np.zeros((2, 3, 3), bool), with_masks=False).masks()
