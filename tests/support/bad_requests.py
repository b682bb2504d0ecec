"""A catalogue of malformed requests, as an attacker or a careless integrator would send them.

Shared by tests/test_service_faults.py (each case through a real TorchServe) and benchmarks/soak.py
(bad requests mixed into the soak). Every case is built as the exact bytes on the wire (method,
path, headers, body), so nothing in between "fixes" it, and carries what the service must
answer: the HTTP status, and the handler's error code (None for TorchServe's own answers, e.g.
404 for an unknown model or 405 for a wrong method).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import psutil
from PIL import Image

#: An error body larger than this is a finding: TorchServe closes the connection after a 4xx,
#: and a big body may be cut off by the close (the client sees a reset instead of an answer).
SMALL_BODY = 4096


@dataclass
class Wire:
    """One HTTP request as sent: method, path below the inference URL ('' = the model's), headers, body."""

    method: str = "POST"
    path: Optional[str] = None  # None: /predictions/{model}; else this path (e.g. "/predictions/nope")
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class BadCase:
    name: str
    build: Callable[[Sequence[np.ndarray]], Wire]
    status: int
    code: Optional[str]  # the handler's error code; None when TorchServe answers itself
    slow: bool = False  # big bodies: left out of the soak's mix


# --- encoders ----------------------------------------------------------------------------------


def png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def multipart(parts: Sequence[Tuple[bytes, Optional[bytes], Optional[bytes], bytes]],
              boundary: bytes = b"leaksegBoundary7MA4YWxkTrZu0gW") -> Wire:
    """parts: (name, filename or None, content type or None, data) -> a multipart/form-data request."""
    out = io.BytesIO()
    for name, filename, ctype, data in parts:
        out.write(b"--" + boundary + b"\r\n")
        disposition = b'Content-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out.write(disposition + b"\r\n")
        if ctype is not None:
            out.write(b"Content-Type: " + ctype + b"\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return Wire(headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode("latin-1")},
                body=out.getvalue())


def frame_parts(frames: Sequence[np.ndarray]) -> List[tuple]:
    return [(f"frame_{i:04d}".encode(), f"f{i}.png".encode(), b"image/png", png(f)) for i, f in enumerate(frames)]


def good_multipart(frames: Sequence[np.ndarray], extra: Sequence[tuple] = ()) -> Wire:
    return multipart(frame_parts(frames) + list(extra))


def json_wire(body: bytes) -> Wire:
    return Wire(headers={"Content-Type": "application/json"}, body=body)


def good_json(frames: Sequence[np.ndarray], **fields) -> Wire:
    doc = {"frames": [base64.b64encode(png(f)).decode() for f in frames], **fields}
    return json_wire(json.dumps(doc).encode())


def clip_wire(data: bytes) -> Wire:
    return multipart([(b"clip", b"clip.npy", b"application/octet-stream", data)])


# --- crafted files -----------------------------------------------------------------------------


def png_lying_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height (valid CRC) with a tiny compressed payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def npy_lying_header(shape: Tuple[int, ...], dtype: str = "<u1", payload: int = 64) -> bytes:
    """A .npy whose header announces ``shape`` but holds only ``payload`` bytes."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * payload


def npz(members: Dict[str, bytes], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def npz_bomb(frames: int = 32, side: int = 2048) -> bytes:
    """A small .npz whose one member inflates to a float32 RGB clip of frames x side x side (1.5 GiB at 32 x 2048²):
    within the frame-count and pixel limits, over the decoded-bytes budget. Written as a stream (nothing big in
    memory); takes some 30 s of deflate."""
    header = npy_lying_header((frames, side, side, 3), "<f4", payload=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("clip.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = b"\0" * (1 << 22)
            remaining = frames * side * side * 3 * 4
            while remaining:
                n = min(remaining, len(zeros))
                member.write(zeros[:n])
                remaining -= n
    return buf.getvalue()


def png_rgb16(array: np.ndarray) -> bytes:
    """A valid 16-bit-per-channel RGB PNG (48-bit) of an H x W x 3 uint16 array (Pillow cannot write one)."""
    height, width, _ = array.shape
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows)) \
        + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tiff_rgb16(array: np.ndarray) -> bytes:
    """A valid uncompressed little-endian TIFF of an H x W x 3 uint16 array (48-bit RGB)."""
    height, width, _ = array.shape
    pixels = array.astype("<u2").tobytes()
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 6
    values = {258: bits_at, 273: pixels_at}
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + struct.pack("<I" if kind == 4 or tag == 258 else "<HH",
                                                              *([values.get(tag, value)] if kind == 4 or tag == 258
                                                                else [value, 0]))
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 16, 16, 16) + pixels


def eps(postscript: bytes) -> bytes:
    """An EPS file (8 x 8 points) running ``postscript``: Pillow hands EPS to Ghostscript."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n" + postscript + b"\nshowpage\n"


def eps_writing(path: str) -> bytes:
    """An EPS whose PostScript writes a file at ``path`` (Ghostscript's -dSAFER allows it under the temp folder)."""
    return eps(b"(" + path.encode() + b") (w) file dup (written by a request) writestring closefile")


def dds_unknown_pixel_format() -> bytes:
    """A DDS header (4 x 4) whose pixel format FourCC is unknown: Pillow raises NotImplementedError."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I", 32, 0x4) + b"ZZZZ" + b"\0" * 20
    return b"DDS " + header + pixel_format + b"\0" * 20 + b"\0" * 64


def npz_patched(data: bytes, flag_bits: Optional[int] = None, method: Optional[int] = None) -> bytes:
    """A one-member zip with its general-purpose flags or compression method rewritten in both headers
    (bit 0: encrypted, bit 5: patched data; method 9: deflate64, 99: AES)."""
    out = bytearray(data)
    for start, at in ((0, 6), (data.rfind(b"PK\x01\x02"), 8)):  # local header, central directory entry
        if flag_bits is not None:
            out[start + at:start + at + 2] = struct.pack("<H", flag_bits)
        if method is not None:
            out[start + at + 2:start + at + 4] = struct.pack("<H", method)
    return bytes(out)


def npz_corrupt_deflate(data: bytes) -> bytes:
    """A deflated one-member zip whose compressed stream is overwritten in its middle."""
    out = bytearray(data)
    name_length, extra_length = struct.unpack_from("<HH", data, 26)
    start = 30 + name_length + extra_length
    out[start + 2:start + 40] = b"\xff" * 38
    return bytes(out)


def npz_directory_bomb(entries: int = 500_000, honest_count: bool = True) -> bytes:
    """A zip whose central directory lists ``entries`` members (46 + 10 bytes each: 28 MB for 500,000), with a
    zip64 end record announcing them, or (``honest_count`` False) a plain end record claiming one entry."""
    local = b"PK\x03\x04" + struct.pack("<5H3L2H", 20, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    names = (f"{i:06d}.npy".encode() for i in range(entries))
    directory = b"".join(b"PK\x01\x02" + struct.pack("<4B4HL2L5H2L", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0,
                                                      len(name), 0, 0, 0, 0, 0, 0) + name for name in names)
    at = len(local)
    if not honest_count:
        return local + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), at, 0)
    record_at = at + len(directory)
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory), at)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + directory + zip64 + locator + end


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def pickled_npy() -> bytes:
    """An object-array .npy: loading it with allow_pickle=True would run code."""
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(), 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def deep_json(levels: int = 50_000) -> bytes:
    return b"[" * levels + b"]" * levels


# --- what a request costs ------------------------------------------------------------------------


class PeakRSS:
    """Samples a process's RSS on a thread until stopped; ``peak`` in bytes (a TorchServe worker's, while it
    handles one request: tests/test_service_faults.py and benchmarks/request_memory.py)."""

    def __init__(self, pid: int, interval: float = 0.002):
        self.process, self.interval = psutil.Process(pid), interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:  # the worker died under the request: the answer says so
                return
            time.sleep(self.interval)


# --- the catalogue -----------------------------------------------------------------------------


def _frames_json(frames) -> List[str]:
    return [base64.b64encode(png(f)).decode() for f in frames]


def catalogue(model: str = "") -> List[BadCase]:
    """Every malformed request with the answer it must get; ``model`` is the served model's name."""
    cases: List[BadCase] = []

    def add(name, status, code, build, slow=False):
        cases.append(BadCase(name, build, status, code, slow))

    # -- content types and headers
    add("no_content_type", 415, "unsupported_content_type", lambda f: Wire(body=png(f[0])))
    add("text_plain", 415, "unsupported_content_type",
        lambda f: Wire(headers={"Content-Type": "text/plain"}, body=b"hello"))
    add("urlencoded", 415, "unsupported_content_type",
        lambda f: Wire(headers={"Content-Type": "application/x-www-form-urlencoded"}, body=b"a=b&c=d"))
    add("octet_stream", 415, "unsupported_content_type",
        lambda f: Wire(headers={"Content-Type": "application/octet-stream"}, body=npy(np.stack(f))))
    add("multipart_wrong_boundary", 400, "no_frames",
        lambda f: Wire(headers={"Content-Type": "multipart/form-data; boundary=other"},
                       body=good_multipart(f).body))
    add("multipart_truncated", 400, "too_few_frames",  # cut in the second of three parts: one frame left
        lambda f: Wire(headers=good_multipart(f).headers, body=_half(good_multipart(f).body)))
    add("multipart_empty", 400, "no_frames",
        lambda f: Wire(headers={"Content-Type": "multipart/form-data; boundary=x"}, body=b""))
    # -- JSON
    add("json_empty", 400, "invalid_body", lambda f: json_wire(b""))
    add("json_malformed", 400, "invalid_body", lambda f: json_wire(b'{"frames": [,]}'))
    add("json_array_body", 400, "invalid_body", lambda f: json_wire(b"[1, 2, 3]"))
    add("json_invalid_utf8", 400, "invalid_body", lambda f: json_wire(b'{"frames": ["\xff\xfe\xfd"]}'))
    add("json_deep_body", 400, "invalid_body", lambda f: json_wire(deep_json()))
    add("json_deep_frames", 400, "invalid_body",
        lambda f: json_wire(b'{"frames": ' + deep_json() + b"}"))
    add("json_deep_prompts", 400, "invalid_body",
        lambda f: json_wire(b'{"frames": ' + json.dumps(_frames_json(f)).encode() + b', "prompts": '
                            + deep_json() + b"}"))
    add("json_deep_options", 400, "invalid_body",
        lambda f: json_wire(b'{"frames": ' + json.dumps(_frames_json(f)).encode() + b', "options": '
                            + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"))
    add("json_nested_900", 400, "invalid_body",  # parses (below Python's recursion limit), still refused
        lambda f: json_wire(b'{"frames": ' + deep_json(900) + b"}"))
    add("json_many_unknown_fields", 400, "invalid_body",
        lambda f: json_wire(json.dumps({f"field_{i}_" + "x" * 50: i for i in range(20_000)}).encode()))
    add("json_huge_field_name", 400, "invalid_body",
        lambda f: json_wire(json.dumps({"y" * 2_000_000: 1}).encode()))
    add("json_frames_not_base64", 400, "frame_decode_error",
        lambda f: json_wire(json.dumps({"frames": ["!!!not base64!!!"] * 3}).encode()))
    add("json_frames_numbers", 400, "invalid_body", lambda f: json_wire(b'{"frames": [1, 2, 3]}'))
    add("json_describe_string", 400, "invalid_body", lambda f: json_wire(b'{"describe": "yes"}'))
    add("json_huge_number", 400, "invalid_body",  # Python's int() refuses > 4300 digits: not valid JSON here
        lambda f: json_wire(json.dumps({"frames": _frames_json(f)}).encode()[:-1]
                            + b', "options": {"threshold": 1' + b"0" * 5000 + b"}}"))
    # -- prompts (error bodies must not echo them)
    add("prompts_4x1MB_json", 400, "unknown_prompt",
        lambda f: good_json(f, prompts=["x" * 1_000_000] * 4), slow=True)
    add("prompts_4x1MB_multipart", 400, "unknown_prompt",
        lambda f: good_multipart(f, [(b"prompts", None, None, json.dumps(["x" * 1_000_000] * 4).encode())]),
        slow=True)
    add("prompts_1MB", 400, "unknown_prompt",
        lambda f: good_json(f, prompts=["z" * 1_000_000, "white steam", "white steam", "white steam"]))
    add("prompts_unknown", 400, "unknown_prompt", lambda f: good_json(f, prompts=["a", "b", "c", "d"]))
    add("prompts_wrong_count", 400, "wrong_prompt_count", lambda f: good_json(f, prompts=["white steam"]))
    add("prompts_100k", 400, "wrong_prompt_count", lambda f: good_json(f, prompts=["white steam"] * 100_000))
    add("prompts_not_list", 400, "invalid_body", lambda f: good_json(f, prompts="white steam"))
    add("prompts_path_like", 400, "unknown_prompt",
        lambda f: good_json(f, prompts=["../../etc/passwd", "%s%s%n", "\u0000", "{{7*7}}"]))
    add("prompts_invalid_utf8_part", 400, "invalid_body",
        lambda f: good_multipart(f, [(b"prompts", None, None, b'["\xff\xfe"]')]))
    # -- options, each out of range
    for option, value in [("threshold", -0.1), ("threshold", 1.5), ("threshold", "high"), ("threshold", None),
                          ("normalization", "z-score"), ("opening_kernel", -1), ("opening_kernel", 10 ** 9),
                          ("opening_kernel", 2.5), ("return_masks", "maybe"), ("return_probabilities", 3),
                          ("probability_size", 7), ("probability_size", 353), ("probability_size", 10 ** 12),
                          ("no_such_option", 1)]:
        add(f"option_{option}_{value!r}", 400, "invalid_options",
            lambda f, o=option, v=value: good_json(f, options={o: v}))
    add("options_not_object", 400, "invalid_options", lambda f: good_json(f, options=[1, 2]))
    add("options_not_json_part", 400, "invalid_options",
        lambda f: good_multipart(f, [(b"options", None, None, b"{threshold: 0.4")]))
    # -- frames: counts and sizes
    add("no_frames_json", 400, "no_frames", lambda f: json_wire(b'{"frames": []}'))
    add("too_few_frames", 400, "too_few_frames", lambda f: good_multipart(f[:2]))
    add("too_many_frames", 413, "too_many_frames", lambda f: good_multipart([f[0]] * 33))
    add("huge_part_count", 413, "too_many_frames",
        lambda f: multipart([(f"frame_{i}".encode(), None, None, b"x") for i in range(5000)]))
    add("unknown_parts_many", 400, "invalid_body",
        lambda f: multipart([(f"junk_{i}".encode(), None, None, b"x") for i in range(5000)]))
    add("part_name_invalid_utf8", 400, "invalid_body",
        lambda f: multipart([(b"frame_\xff\xfe", None, None, png(f[0]))] + frame_parts(f)))
    add("part_name_path", 400, "invalid_body",
        lambda f: multipart([(b"../../etc/passwd", b"../../etc/passwd", b"image/png", png(f[0]))]))
    add("frame_number_twice", 400, "invalid_body",
        lambda f: multipart(frame_parts(f) + [(b"frame_1", b"x.png", b"image/png", png(f[0]))]))
    add("clip_and_frames", 400, "invalid_body",
        lambda f: multipart(frame_parts(f) + [(b"clip", b"c.npy", None, npy(np.stack(f)))]))
    add("size_mismatch", 400, "frame_size_mismatch",
        lambda f: good_multipart([f[0], f[1][:-1], f[2]]))
    add("png_truncated", 400, "frame_decode_error",
        lambda f: _first_frame(f, png(f[0])[:40]))
    add("png_empty", 400, "frame_decode_error",
        lambda f: _first_frame(f, b""))
    add("png_garbage", 400, "frame_decode_error",
        lambda f: _first_frame(f, bytes(range(256)) * 40))
    add("png_header_100k_x_100k", 413, "frame_too_large",
        lambda f: _first_frame(f, png_lying_header(100_000, 100_000)))
    add("png_header_2049_x_2048", 413, "frame_too_large",
        lambda f: _first_frame(f, png_lying_header(2049, 2048)))
    add("png_header_lies_small", 400, "frame_decode_error",  # announces 64x64, holds 1 KiB of zeros
        lambda f: _first_frame(f, png_lying_header(64, 64)))
    add("frame_part_as_json", 400, "frame_decode_error",
        lambda f: multipart([(b"frame_0", b"f.json", b"application/json", b"[1, 2, 3]")] + frame_parts(f)[1:]))
    # -- .npy / .npz clips
    add("npy_pickled", 400, "frame_decode_error", lambda f: clip_wire(pickled_npy()))
    add("npy_truncated", 400, "frame_decode_error", lambda f: clip_wire(npy(np.stack(f))[:-100]))
    add("npy_header_only", 400, "frame_decode_error", lambda f: clip_wire(npy(np.stack(f))[:60]))
    add("npy_lying_header_huge", 413, "too_many_frames",
        lambda f: clip_wire(npy_lying_header((10 ** 9, 10 ** 9, 10 ** 9))))
    add("npy_lying_header_within_limits", 400, "frame_decode_error",
        lambda f: clip_wire(npy_lying_header((32, 2048, 2048, 3), "<u2")))
    add("npy_negative_shape", 400, "frame_decode_error", lambda f: clip_wire(npy_lying_header((3, -5, 7))))
    add("npy_zero_frames", 400, "no_frames", lambda f: clip_wire(npy(np.zeros((0, 8, 8), np.uint8))))
    add("npy_zero_pixels", 400, "frame_decode_error", lambda f: clip_wire(npy(np.zeros((6, 0, 0), np.uint8))))
    add("npy_zero_width", 400, "frame_decode_error", lambda f: clip_wire(npy(np.zeros((3, 8, 0), np.uint8))))
    add("npy_too_large_frame", 413, "frame_too_large", lambda f: clip_wire(npy_lying_header((3, 4096, 4096))))
    add("npy_nan", 400, "frame_decode_error",
        lambda f: clip_wire(npy(np.full((3, 8, 8), np.nan, np.float32))))
    add("npy_inf", 400, "frame_decode_error",
        lambda f: clip_wire(npy(np.full((3, 8, 8), np.inf, np.float32))))
    for dtype in ("bool", "int8", "int16", "int32", "int64", "uint32", "uint64", "float16", "float64",
                  "complex64", "<U3", "S3", "V4", "datetime64[s]"):
        add(f"npy_dtype_{dtype}", 400, "frame_decode_error",
            lambda f, d=dtype: clip_wire(npy(np.zeros((3, 8, 8), dtype=d))))
    for shape in [(), (5,), (3, 8), (3, 8, 8, 1), (3, 8, 8, 4), (3, 8, 8, 3, 1), (1,) * 32]:
        add(f"npy_rank_{len(shape)}_{shape}", 400, "frame_decode_error",
            lambda f, s=shape: clip_wire(npy(np.zeros(s, np.uint8))))
    add("npz_empty", 400, "frame_decode_error", lambda f: clip_wire(npz({})))
    add("npz_two_arrays", 400, "frame_decode_error",
        lambda f: clip_wire(npz({"a.npy": npy(np.stack(f)), "b.npy": npy(np.stack(f))})))
    add("npz_member_not_npy", 400, "frame_decode_error", lambda f: clip_wire(npz({"a.npy": b"hello"})))
    add("npz_corrupt_zip", 400, "frame_decode_error", lambda f: clip_wire(b"PK\x03\x04" + b"\0" * 100))
    add("npz_bomb_float32_rgb_32x2048", 413, "too_many_frames", lambda f: clip_wire(npz_bomb()), slow=True)
    add("npz_bomb_uint8_32x2048", 400, "frame_decode_error",  # within budget, but the member lies about its size
        lambda f: clip_wire(npz({"clip.npy": npy_lying_header((32, 2048, 2048), payload=1 << 20)})))
    # -- decoders a frame must never reach, and decoder failures, which are the sender's (issue 19)
    add("eps_postscript_error", 400, "frame_decode_error", lambda f: _first_frame(f, eps(b"undefinedcommand")))
    add("dds_unknown_pixel_format", 400, "frame_decode_error", lambda f: _first_frame(f, dds_unknown_pixel_format()))
    add("png_rgb16_radiometric", 400, "frame_decode_error",  # Pillow keeps the high byte: 7000..7300 -> flat
        lambda f: multipart(_image_parts([png_rgb16(radiometric_rgb(x)) for x in f])))
    add("tiff_rgb16_radiometric", 400, "frame_decode_error",
        lambda f: multipart(_image_parts([tiff_rgb16(radiometric_rgb(x)) for x in f])))
    for zip_case, flag_bits, method in [("encrypted", 0x1, None), ("patched_data", 0x20, None),
                                        ("method_99", None, 99), ("deflate64", None, 9)]:
        add(f"npz_{zip_case}", 400, "frame_decode_error",
            lambda f, b=flag_bits, m=method: clip_wire(npz_patched(npz({"clip.npy": npy(np.stack(f))}), b, m)))
    add("npz_corrupt_deflate", 400, "frame_decode_error",
        lambda f: clip_wire(npz_corrupt_deflate(npz({"clip.npy": npy(np.stack(f))}))))
    add("npz_directory_500k_entries", 400, "frame_decode_error", lambda f: clip_wire(npz_directory_bomb()), slow=True)
    add("npz_directory_count_lies", 400, "frame_decode_error",
        lambda f: clip_wire(npz_directory_bomb(honest_count=False)), slow=True)
    # -- counted before decoding: frames before base64, option keys before validation
    add("json_frames_beyond_count", 413, "too_many_frames",
        lambda f: json_wire(json.dumps({"frames": ["!!!not base64!!!"] * 5000}).encode()))
    add("options_200k_keys", 400, "invalid_options",
        lambda f: good_json(f, options={f"option_{i}": i for i in range(200_000)}))
    # -- models, paths and methods: TorchServe's own answers
    add("unknown_model", 404, None, lambda f: Wire(path="/predictions/no_such_model", **_good(f)))
    add("model_path_traversal", 404, None, lambda f: Wire(path="/predictions/..%2F..%2Fetc%2Fpasswd", **_good(f)))
    add("model_name_huge", 404, None, lambda f: Wire(path="/predictions/" + "m" * 3000, **_good(f)))
    add("model_name_shell", 404, None, lambda f: Wire(path="/predictions/%24(reboot)%3B%60id%60", **_good(f)))
    add("model_version_unknown", 404, None, lambda f: Wire(path=f"/predictions/{model}/9.9", **_good(f)))
    # Methods: TorchServe 0.12 routes GET/PUT/PATCH/DELETE /predictions/{model} like POST (the handler is not
    # told the method), so a bodiless one is refused for its missing Content-Type and one with a body is answered.
    add("method_delete", 415, "unsupported_content_type", lambda f: Wire(method="DELETE"))
    add("method_get", 415, "unsupported_content_type", lambda f: Wire(method="GET"))
    add("method_put_bad_body", 400, "invalid_body", lambda f: Wire("PUT", None, json_wire(b"{").headers, b"{"))
    return cases


def radiometric_rgb(frame: np.ndarray) -> np.ndarray:
    """An 8-bit grey frame as 16-bit RGB radiometric values, 7000 + 1 per grey level (7000..7255)."""
    return np.repeat((frame.astype(np.uint16) + 7000)[..., None], 3, axis=2)


def _image_parts(files: Sequence[bytes]) -> List[tuple]:
    return [(f"frame_{i:04d}".encode(), f"f{i}".encode(), b"application/octet-stream", data)
            for i, data in enumerate(files)]


def _first_frame(frames, data: bytes) -> Wire:
    """A good multipart clip whose first frame is ``data``."""
    return multipart([(b"frame_0", b"f.png", b"image/png", data)] + frame_parts(frames)[1:])


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _good(frames) -> dict:
    wire = good_multipart(frames)
    return {"headers": wire.headers, "body": wire.body}
