"""leakseg.io.frames on its own: every way bytes, files, folders and arrays become frames.

* image files: formats, modes, 16-bit grey, and an oversized frame refused from its header;
* .npy/.npz: layouts, dtypes, byte order, members, pickles, truncation and lying headers;
* what a caller may hand over (sort_input), the command line's paths, the drop folder's frame files;
* natural sort, the clip-level stretch, and the error code of every refusal.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import support.bad_requests as bad
from leakseg.io.frames import (
    MAX_CLIP_BYTES,
    STRETCH_PERCENTILES,
    ClipLimits,
    check_clip,
    clip_array_from,
    decode_clip_bytes,
    decode_clip_images,
    decode_frame_bytes,
    decode_image_bytes,
    list_image_files,
    natural_key,
    read_clip_paths,
    read_frame_file,
    sort_input,
    to_uint8_clip,
)
from leakseg.schema import ErrorCode, InputError

from support.fake_service import image_bytes


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npz(**members: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **members)
    return buf.getvalue()


def refusal(call, *args) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args)
    return info.value


def small_clip(seed: int = 0, t: int = 3, h: int = 40, w: int = 56):
    rng = np.random.default_rng(seed)
    base = rng.random((h, w)) * 255
    return [np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8) for _ in range(t)]


# --- image files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
@pytest.mark.parametrize("mode, shape", [("L", (6, 8)), ("RGB", (6, 8, 3))])
def test_every_format_decodes_grey_and_colour(fmt, mode, shape):
    pixels = np.full(shape, 120, np.uint8)
    frame = decode_image_bytes(encoded(Image.fromarray(pixels, mode), fmt), "f.img")
    assert frame.dtype == np.uint8 and frame.shape == shape
    assert np.abs(frame.astype(int) - 120).max() <= 2  # JPEG is lossy


@pytest.mark.parametrize("image, dtype, shape", [
    (Image.new("RGBA", (8, 6), (10, 20, 30, 40)), np.uint8, (6, 8, 3)),
    (Image.new("P", (8, 6)), np.uint8, (6, 8, 3)),
    (Image.new("1", (8, 6), 1), np.uint8, (6, 8)),
    (Image.new("LA", (8, 6), (90, 10)), np.uint8, (6, 8)),
    (Image.new("CMYK", (8, 6)), np.uint8, (6, 8, 3)),
], ids=["RGBA", "P", "1", "LA", "CMYK"])
def test_other_modes_become_grey_or_rgb(image, dtype, shape):
    fmt = "TIFF" if image.mode == "CMYK" else "PNG"
    frame = decode_image_bytes(encoded(image, fmt), "f")
    assert frame.dtype == dtype and frame.shape == shape


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grey_stays_uint16(fmt):
    grey16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    frame = decode_image_bytes(encoded(Image.fromarray(grey16), fmt), "f")
    assert frame.dtype == np.uint16
    np.testing.assert_array_equal(frame, grey16)


def test_mode_i_is_uint16_when_it_fits_and_float_beyond():
    fits = decode_image_bytes(encoded(Image.fromarray(np.full((3, 4), 40000, np.int32)), "TIFF"), "f")
    assert fits.dtype == np.uint16 and fits.max() == 40000
    beyond = decode_image_bytes(encoded(Image.fromarray(np.full((3, 4), 70000, np.int32)), "TIFF"), "f")
    assert beyond.dtype == np.float32 and beyond.max() == 70000


def test_mode_f_is_float32():
    values = np.linspace(-5, 300, 12, dtype=np.float32).reshape(3, 4)
    frame = decode_image_bytes(encoded(Image.fromarray(values, "F"), "TIFF"), "f")
    assert frame.dtype == np.float32
    np.testing.assert_array_equal(frame, values)


def test_unreadable_image_names_itself():
    err = refusal(decode_image_bytes, b"not an image", "frame_0003")
    assert err.code == ErrorCode.FRAME_DECODE_ERROR and err.field == "frame_0003" and err.status == 400
    assert "not a readable PNG, JPEG, TIFF or BMP" in err.message


def test_oversized_image_is_refused_from_its_header():
    """The frame limit is checked before decoding: a truncated body would otherwise be a decode error."""
    header_only = encoded(Image.new("L", (300, 200)))[:100]
    err = refusal(decode_image_bytes, header_only, "big.png", ClipLimits(max_frame_pixels=300 * 200 - 1))
    assert err.code == ErrorCode.FRAME_TOO_LARGE and err.status == 413 and "300x200" in err.message
    assert refusal(decode_image_bytes, header_only, "big.png").code == ErrorCode.FRAME_DECODE_ERROR


# Formats Pillow writes but the API does not document: none of their plugins may see a frame.
UNDOCUMENTED_FORMATS = ["GIF", "PPM", "ICO", "WEBP", "TGA", "PCX", "SGI", "DDS", "QOI"]


@pytest.mark.parametrize("fmt", UNDOCUMENTED_FORMATS)
def test_only_the_documented_formats_are_opened(fmt):
    data = encoded(Image.new("RGB", (8, 6), (10, 20, 30)), fmt)
    err = refusal(decode_image_bytes, data, "frame_0000")
    assert err.code == ErrorCode.FRAME_DECODE_ERROR and "not a readable PNG, JPEG, TIFF or BMP" in err.message


def test_an_eps_frame_never_runs_ghostscript(tmp_path):
    """Pillow hands EPS to Ghostscript, whose -dSAFER still lets PostScript write files (under the temp folder)."""
    target = tmp_path / "written-by-postscript.txt"
    err = refusal(decode_image_bytes, bad.eps_writing(str(target)), "frame_0000")
    assert err.code == ErrorCode.FRAME_DECODE_ERROR
    assert not target.exists()


@pytest.mark.parametrize("compression", ["tiff_jpeg", "tiff_deflate", "tiff_lzw", "packbits"])
def test_compressed_tiffs_still_decode(compression):
    """Only the container formats are restricted: a TIFF's own codecs (JPEG inside TIFF too) keep working."""
    pixels = np.full((16, 16, 3), 120, np.uint8)
    frame = decode_image_bytes(encoded_with(Image.fromarray(pixels), "TIFF", compression=compression), "f.tif")
    assert frame.shape == (16, 16, 3) and np.abs(frame.astype(int) - 120).max() <= 2


def encoded_with(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    bad.eps(b"undefinedcommand"),
    bad.dds_unknown_pixel_format(),
], ids=["eps_postscript_error", "dds_unknown_pixel_format"])
def test_decoder_failures_on_images_are_decode_errors(data):
    assert refusal(decode_image_bytes, data, "frame_0000").code == ErrorCode.FRAME_DECODE_ERROR


def _one_npz(compress: bool = True) -> bytes:
    return bad.npz({"clip.npy": bad.npy(np.zeros((3, 8, 8), np.uint8))}, compress)


@pytest.mark.parametrize("data", [
    bad.npz_patched(_one_npz(), flag_bits=0x1),
    bad.npz_patched(_one_npz(), flag_bits=0x20),
    bad.npz_patched(_one_npz(), method=99),
    bad.npz_patched(_one_npz(), method=9),
    bad.npz_patched(_one_npz(), method=12),
    bad.npz_corrupt_deflate(_one_npz()),
    _one_npz()[:-30],
], ids=["encrypted", "patched_data", "method_99_aes", "deflate64", "bzip2", "corrupt_deflate", "cut_end_record"])
def test_decoder_failures_on_npz_clips_are_decode_errors(data):
    err = refusal(decode_clip_bytes, data, "clip", ClipLimits())
    assert err.code == ErrorCode.FRAME_DECODE_ERROR and err.field == "clip"


@pytest.mark.parametrize("honest_count", [True, False], ids=["zip64_count", "count_lies_directory_size"])
def test_npz_directory_is_refused_from_its_end_record_before_zipfile_reads_it(honest_count):
    """zipfile builds one object per directory entry before anyone can count them (500,000: 180 MiB, seconds)."""
    import tracemalloc

    data = bad.npz_directory_bomb(200_000, honest_count)
    tracemalloc.start()
    try:
        err = refusal(decode_clip_bytes, data, "clip", ClipLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.code == ErrorCode.FRAME_DECODE_ERROR
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("encode", [bad.png_rgb16, bad.tiff_rgb16], ids=["png", "tiff"])
def test_sixteen_bit_colour_is_refused_never_cut_to_its_high_byte(encode):
    """Pillow opens 48-bit RGB as 8-bit RGB: radiometric 7000..7255 would all become 27 or 28 (a flat frame)."""
    radiometric = bad.radiometric_rgb(small_clip()[0])
    err = refusal(decode_image_bytes, encode(radiometric), "frame_0001")
    assert err.code == ErrorCode.FRAME_DECODE_ERROR and err.field == "frame_0001"
    assert "16-bit colour" in err.message and ".npy" in err.message
    truncated = encode(radiometric)[:200]  # refused from the header: the same answer without the pixels
    assert "16-bit colour" in refusal(decode_image_bytes, truncated, "frame_0001").message


def test_sixteen_bit_colour_travels_losslessly_as_npy():
    clip = np.stack([bad.radiometric_rgb(f) for f in small_clip()])
    np.testing.assert_array_equal(np.stack(decode_clip_bytes(npy(clip), "clip", ClipLimits())), clip)


def test_decoded_bytes_budget_is_checked_from_the_header():
    limits = ClipLimits()
    assert limits.max_clip_bytes == MAX_CLIP_BYTES == 32 * 2048 * 2048 * 3 * 2  # the largest 16-bit RGB clip
    with pytest.raises(InputError) as info:  # float32 RGB at the frame limits: 1.5 GiB announced, 64 bytes held
        decode_clip_bytes(bad.npy_lying_header((32, 2048, 2048, 3), "<f4"), "clip", limits)
    assert info.value.code == ErrorCode.TOO_MANY_FRAMES and info.value.status == 413
    assert "at most 16 frames of this size and type" in info.value.message
    with pytest.raises(InputError) as info:  # 16-bit RGB at the limits fits the budget: only its truncation is wrong
        decode_clip_bytes(bad.npy_lying_header((32, 2048, 2048, 3), "<u2"), "clip", limits)
    assert info.value.code == ErrorCode.FRAME_DECODE_ERROR
    small = ClipLimits(max_clip_bytes=3 * 40 * 56)  # images: from their headers, before any pixel is decoded
    frames = [(f"frame_{i}", bad.png(f)) for i, f in enumerate(small_clip(t=4))]
    with pytest.raises(InputError, match="at most 3 frames of this size"):
        decode_clip_images(frames, small)
    assert len(decode_clip_images(frames[:3], small)) == 3


def test_clip_images_count_is_limited_and_order_kept():
    frames = [(f"frame_{i}", bad.png(np.full((4, 4), i, np.uint8))) for i in range(5)]
    assert refusal(decode_clip_images, frames, ClipLimits(max_frames=4)).code == ErrorCode.TOO_MANY_FRAMES
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        decoded = decode_clip_images(frames, ClipLimits(), pool)
    assert [int(f[0, 0]) for f in decoded] == [0, 1, 2, 3, 4]


# --- .npy / .npz ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(3, 5, 7), (3, 5, 7, 3)], ids=["grey", "rgb"])
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_clip_layouts_decode_exactly(dtype, shape, container):
    clip = (np.random.default_rng(1).random(shape) * 200).astype(dtype)
    data = npy(clip) if container == "npy" else npz(frames=clip)
    frames = decode_clip_bytes(data, "clip", ClipLimits())
    assert len(frames) == 3 and frames[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.stack(frames), clip)


def test_big_endian_clips_arrive_in_native_order():
    clip = np.arange(2 * 3 * 4, dtype=">u2").reshape(2, 3, 4)
    frames = decode_clip_bytes(npy(clip))
    assert frames[0].dtype == np.dtype("=u2")
    np.testing.assert_array_equal(np.stack(frames), clip)


@pytest.mark.parametrize("data, words", [
    (npy(np.zeros((2, 4, 4), np.int32)), "unsupported dtype int32"),
    (npy(np.zeros((2, 4, 4), np.float64)), "use uint8, uint16 or float32"),
    (npy(np.zeros((4, 4), np.uint8)), "is one frame, not a clip"),
    (npy(np.zeros((2, 4, 4, 4), np.uint8)), "expected T x H x W or T x H x W x 3"),
    (npy(np.array([{"a": 1}], dtype=object)), "unsupported dtype object"),
    (npz(a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8)), "expected one array in the .npz"),
    (b"\x93NUMPY garbage", "not a readable .npy/.npz array"),
    (npy(np.zeros((3, 8, 8), np.uint8))[:-10], "is truncated"),
], ids=["int32", "float64", "2d", "rgba", "pickled", "two-members", "garbage", "truncated"])
def test_bad_clip_arrays_are_decode_errors(data, words):
    err = refusal(decode_clip_bytes, data, "clip", ClipLimits())
    assert err.code == ErrorCode.FRAME_DECODE_ERROR and err.field == "clip" and words in err.message


def test_clip_limits_are_checked_from_the_header():
    assert refusal(decode_clip_bytes, bad.npy_lying_header((33, 8, 8)), "clip", ClipLimits()).code == \
        ErrorCode.TOO_MANY_FRAMES
    err = refusal(decode_clip_bytes, bad.npy_lying_header((3, 2049, 2049)), "clip", ClipLimits())
    assert err.code == ErrorCode.FRAME_TOO_LARGE and err.field == "clip"


def test_one_frame_arrays_for_drop_folders():
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.testing.assert_array_equal(decode_frame_bytes(npy(frame), "f.npy"), frame)
    assert decode_frame_bytes(npy(np.zeros((3, 4, 3), np.float32)), "f.npy").shape == (3, 4, 3)
    assert "expected H x W or H x W x 3" in refusal(decode_frame_bytes, npy(np.zeros((2, 3, 4), np.uint8)), "f").message
    assert "unsupported dtype" in refusal(decode_frame_bytes, npy(np.zeros((3, 4), np.int16)), "f").message


# --- files, folders and what a caller hands over ----------------------------------------------


def test_folders_list_images_in_natural_order(tmp_path):
    for name in ("frame10.png", "Frame2.PNG", "frame1.tif", "notes.txt", "clip.npy"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_image_files(tmp_path)] == ["frame1.tif", "Frame2.PNG", "frame10.png"]
    assert list_image_files(tmp_path / "missing") == []


def test_clip_array_from_decodes_every_kind(tmp_path, image_folder):
    folder, _ = image_folder
    assert clip_array_from(folder).shape == (10, 6, 8)
    grey16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    (tmp_path / "a.tif").write_bytes(image_bytes(grey16, "TIFF"))
    loaded = clip_array_from([tmp_path / "a.tif"])
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded[0], grey16)
    np.save(tmp_path / "c.npy", np.stack([grey16, grey16]))
    assert clip_array_from(tmp_path / "c.npy").shape == (2, 6, 8)
    assert clip_array_from(grey16).shape == (1, 6, 8)  # one frame, e.g. for an overlay
    assert clip_array_from([Image.fromarray(grey16)] * 2).dtype == np.uint16
    assert clip_array_from(np.zeros((2, 3, 4), np.float64)).dtype == np.float64  # overlays stretch any dtype


@pytest.mark.parametrize("frames, error, words", [
    ([], ValueError, "no frames given"),
    ([np.zeros((4, 4), np.uint8), Image.new("L", (4, 4))], TypeError, "frames mix"),
    ([np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)], ValueError, "one size and type"),
    ([3], TypeError, "unsupported frame type int"),
    (b"\x89PNG", TypeError, "frames must be"),
    (42, TypeError, "frames must be"),
], ids=["empty", "mixed", "sizes", "item", "bytes", "int"])
def test_sort_input_refuses_what_no_caller_takes(frames, error, words):
    with pytest.raises(error, match=words):
        sort_input(frames)


def test_sort_input_sorts_paths(tmp_path, image_folder):
    folder, _ = image_folder
    assert [p.name for p in sort_input(str(folder)).image_files][:3] == ["frame1.png", "frame2.png", "frame3.png"]
    assert sort_input(tmp_path / "c.npz").clip_file == tmp_path / "c.npz"
    assert sort_input([tmp_path / "a.png", "b.jpg"]).image_files == (tmp_path / "a.png", Path("b.jpg"))
    for alone in (folder, tmp_path / "c.npy"):
        with pytest.raises(ValueError, match="must be passed on its own"):
            sort_input([alone])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        sort_input(tmp_path / "empty")


def test_command_line_paths(tmp_path, image_folder):
    """`leakseg predict`: one argument is the whole clip (a folder, a clip file), several are image files."""
    folder, _ = image_folder
    frames, names = read_clip_paths([str(folder)], ClipLimits())
    assert len(frames) == 10 and names[0].endswith("frame1.png")
    np.save(tmp_path / "c.npy", np.zeros((3, 4, 5), np.uint8))
    frames, names = read_clip_paths(tmp_path / "c.npy")
    assert len(frames) == 3 and names == ["c.npy[0]", "c.npy[1]", "c.npy[2]"]
    files = list_image_files(folder)
    assert len(read_clip_paths(files[:3])[0]) == 3
    assert refusal(read_clip_paths, files, ClipLimits(max_frames=9)).code == ErrorCode.TOO_MANY_FRAMES
    with pytest.raises(ValueError, match="on its own"):
        read_clip_paths([folder, files[0]])
    with pytest.raises(FileNotFoundError):
        read_clip_paths([tmp_path / "missing.png"])


def test_frame_files_of_a_drop_folder(tmp_path):
    grey16 = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    Image.fromarray(grey16).save(tmp_path / "f1.png")
    np.save(tmp_path / "f2.npy", grey16.astype(">u2"))
    np.testing.assert_array_equal(read_frame_file(tmp_path / "f1.png"), grey16)
    from_npy = read_frame_file(tmp_path / "f2.npy")
    assert from_npy.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(from_npy, grey16)
    (tmp_path / "half.png").write_bytes((tmp_path / "f1.png").read_bytes()[:30])
    with pytest.raises(ValueError):  # a file still being written: the monitor retries it
        read_frame_file(tmp_path / "half.png")


def test_a_frame_file_announcing_a_huge_frame_is_refused_from_its_header(tmp_path):
    """A 128-byte .npy whose header announces 100000 x 100000 x 3 would make numpy allocate 56 GiB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<u2", "fortran_order": False, "shape": (100000, 100000, 3)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue())  # magic and header only: no pixels at all
    assert refusal(read_frame_file, tmp_path / "huge.npy", ClipLimits()).code == ErrorCode.FRAME_TOO_LARGE
    np.save(tmp_path / "wide.npy", np.zeros((1, 2049 * 2049 + 1), np.uint8))
    assert refusal(read_frame_file, tmp_path / "wide.npy", ClipLimits()).code == ErrorCode.FRAME_TOO_LARGE


def test_natural_order_reads_only_decimal_digits_as_numbers():
    names = ["f10.png", "f2.png", "1²1.png", "f1.png"]
    assert sorted(names, key=lambda n: natural_key(Path(n))) == ["1²1.png", "f1.png", "f2.png", "f10.png"]


# --- a clip as a whole ------------------------------------------------------------------------


@pytest.mark.parametrize("frames, code, field", [
    ([], ErrorCode.NO_FRAMES, "frames"),
    (small_clip(t=2), ErrorCode.TOO_FEW_FRAMES, "frames"),
    (small_clip(t=33), ErrorCode.TOO_MANY_FRAMES, "frames"),
    (small_clip(t=2) + small_clip(t=1, h=10), ErrorCode.FRAME_SIZE_MISMATCH, "frame 2"),
    ([np.zeros((2049, 2049), np.uint8)] * 3, ErrorCode.FRAME_TOO_LARGE, "frame 0"),
    ([np.zeros((8, 8), np.int64)] * 3, ErrorCode.FRAME_DECODE_ERROR, "frame 0"),
    ([np.zeros((8, 8, 4), np.uint8)] * 3, ErrorCode.FRAME_DECODE_ERROR, "frame 0"),
    ([np.zeros((0, 8), np.uint8)] * 3, ErrorCode.FRAME_DECODE_ERROR, "frame 0"),
    ([np.zeros((8, 8), np.float32)] * 2 + [np.full((8, 8), np.nan, np.float32)], ErrorCode.FRAME_DECODE_ERROR,
     "frame 2"),
], ids=["none", "few", "many", "sizes", "large", "dtype", "channels", "empty", "nan"])
def test_check_clip_codes(frames, code, field):
    err = refusal(check_clip, frames, ClipLimits())
    assert err.code == code and err.field == field and 400 <= err.status < 500


def test_check_clip_names_frames_by_the_given_names():
    frames = small_clip(t=3)
    frames[1] = frames[1][:-1]
    err = refusal(check_clip, frames, ClipLimits(), ["a.png", "b.png", "c.png"])
    assert err.field == "b.png" and "a.png" in err.message


def test_sixteen_bit_clip_uses_one_stretch_for_the_whole_clip():
    rng = np.random.default_rng(5)
    clip16 = [(rng.random((40, 50)) * 3000 + 20000 + 500 * i).astype(np.uint16) for i in range(4)]
    as8 = to_uint8_clip(clip16)
    lo, hi = np.percentile(np.stack(clip16).astype(np.float32), (0.5, 99.5))
    assert as8[0].dtype == np.uint8 and abs(int(as8[3].mean()) - int(as8[0].mean())) > 10  # one scale per clip
    assert np.array_equal(as8[1], np.clip(np.rint((clip16[1].astype(np.float32) - lo) * 255 / (hi - lo)), 0, 255))


def test_eight_bit_clips_pass_and_flat_clips_map_to_zeros():
    clip8 = small_clip()
    assert all(a is b for a, b in zip(to_uint8_clip(clip8), clip8))
    flat = to_uint8_clip([np.full((4, 4), 1234, np.uint16)] * 3)
    assert all(f.dtype == np.uint8 and not f.any() for f in flat)
    edges = to_uint8_clip([np.array([[np.nan, -np.inf, np.inf, 1.0, 2.0]], np.float32)])[0]
    assert edges[0, :3].tolist() == [0, 0, 255]


def test_the_clip_stretch_in_one_buffer_gives_the_same_bytes():
    """to_uint8_clip works in one float32 buffer (half the memory); the result is the plain formula's, bit for bit."""

    def plain(frames):
        stack = [f.astype(np.float32) for f in frames]
        sample = np.concatenate([s.ravel() for s in stack])
        sample = sample[np.isfinite(sample)]
        lo, hi = np.percentile(sample, STRETCH_PERCENTILES) if sample.size else (0.0, 0.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return [np.clip(np.rint(np.nan_to_num((s - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255)
                .astype(np.uint8) for s in stack]

    rng = np.random.default_rng(5)
    for trial in range(60):
        dtype = (np.uint16, np.float32)[trial % 2]
        shape = tuple(int(s) for s in rng.integers(1, 50, 2)) + (() if trial % 3 else (3,))
        frames = [(rng.random(shape) * rng.choice([1, 1000, 65535])).astype(dtype) for _ in range(rng.integers(1, 6))]
        if dtype == np.float32 and trial % 4 == 0:
            frames[0].flat[0], frames[-1].flat[-1] = np.nan, np.inf
        assert all(np.array_equal(a, b) for a, b in zip(plain(frames), to_uint8_clip(frames))), trial
