"""Frames in: the only code that turns bytes, files, folders and arrays into frames.

Only numpy and Pillow are imported, so the thin client uses it too.
"""
