"""The numpy building blocks of the generator: random fields, blur, sampling and Gaussian rendering.

Pure numpy (no scipy), so the generator installs with the thin client. Every function here is
deterministic given its inputs and generator; the noise fields are periodic, so translating one is a
phase ramp on its spectrum.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def noise_spectrum(rng: np.random.Generator, shape: Tuple[int, int], beta: float) -> np.ndarray:
    """rfft2 spectrum of periodic noise with power ~ 1/f^beta and unit variance in space."""
    white = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    spec = white * f ** (-beta / 2)
    spec[0, 0] = 0.0
    return spec / np.fft.irfft2(spec, s=shape).std()


def noise_field(spec: np.ndarray, shape: Tuple[int, int], shift: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Noise field of a spectrum, translated by ``shift`` = (dy, dx) pixels (sub-pixel, periodic)."""
    if shift != (0.0, 0.0):  # a translation is a phase ramp, separable in y and x
        ey = np.exp(-2j * np.pi * np.fft.fftfreq(shape[0]) * shift[0])
        ex = np.exp(-2j * np.pi * np.fft.rfftfreq(shape[1]) * shift[1])
        spec = spec * ey[:, None] * ex[None, :]
    return np.fft.irfft2(spec, s=shape).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, edges reflected (no scipy)."""
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma).astype(np.float32)  # float32 weights keep the sums in float32
    r = len(k) // 2
    out = img
    for axis in (img.ndim - 2, img.ndim - 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        acc = np.zeros_like(out, dtype=np.float32)
        for i, w in enumerate(k):
            sl = [slice(None)] * img.ndim
            sl[axis] = slice(i, i + n)
            acc += w * padded[tuple(sl)]
        out = acc
    return out


def sample_bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample a 2-D image at float coordinates, clamped to the border."""
    h, w = img.shape
    y = np.clip(y, 0, h - 1.001)
    x = np.clip(x, 0, w - 1.001)
    y0 = y.astype(np.intp)
    x0 = x.astype(np.intp)
    fy, fx = y - y0, x - x0
    flat = img.ravel()
    i = y0 * w + x0
    top = flat[i] * (1 - fx) + flat[i + 1] * fx
    bottom = flat[i + w] * (1 - fx) + flat[i + w + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def render_gaussians(cy, cx, sy, sx, mass, shape: Tuple[int, int]) -> np.ndarray:
    """Sum of axis-aligned normalised 2-D Gaussians as one matrix product: (H x N) @ (N x W)."""
    if len(mass) == 0:
        return np.zeros(shape, np.float32)
    cy, cx, sy, sx, mass = (np.asarray(a, np.float32) for a in (cy, cx, sy, sx, mass))
    out = np.zeros(shape, np.float32)
    # Only the rows and columns within 4 sigma of some puff can be non-zero: render just that window.
    y0, y1 = max(int(np.min(cy - 4 * sy)), 0), min(int(np.max(cy + 4 * sy)) + 2, shape[0])
    x0, x1 = max(int(np.min(cx - 4 * sx)), 0), min(int(np.max(cx + 4 * sx)) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return out
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[:, None]
    gy = np.exp(-0.5 * ((ys - cy) / sy) ** 2) * (mass / (np.float32(2 * math.pi) * sy * sx))
    gx = np.exp(-0.5 * ((xs - cx) / sx) ** 2)
    out[y0:y1, x0:x1] = gy @ gx.T
    return out


def ar1(rng: np.random.Generator, n: int, phi: float, std: float, dims: int = 1) -> np.ndarray:
    """Stationary AR(1) series (n x dims): smooth random processes for gusts, drift and puffing."""
    eps = rng.standard_normal((n, dims)) * std * math.sqrt(1 - phi**2)
    out = np.empty((n, dims))
    out[0] = rng.standard_normal(dims) * std
    for t in range(1, n):
        out[t] = phi * out[t - 1] + eps[t]
    return out


