"""Frames in: the only code that turns bytes, files, folders and arrays into frames.

``frames``: the readers (``read_*`` from paths, ``decode_*`` from bytes, :func:`~leakseg.io.frames.sort_input`
for what a caller may hand over), the request limits and the clip-level 16-bit stretch.
Only numpy, Pillow and pydantic are imported, so the thin client uses it too.
"""
