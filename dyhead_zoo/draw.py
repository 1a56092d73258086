"""Drawing detections on a photo: coloured boxes with the class name and score on a label."""
from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from dyhead_zoo.data.images import ImageInput, load_image
from dyhead_zoo.models.detections import Detections, select


def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated RGB colour for 0-based class ``label``: hues spread by the golden ratio, so
    neighbouring ids look different."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Relative luminance (ITU-R BT.709): dark text on light labels, white on dark ones.
    r, g, b = background
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw(image: ImageInput, detections: Detections, score_threshold: float | None = None) -> Image.Image:
    """A copy of ``image`` with ``detections`` drawn on it, as an RGB PIL image of the original size.

    ``image`` is anything :func:`dyhead_zoo.load_image` reads (a path, a PIL image, an HxWx3 uint8
    array, a (3, H, W) uint8 tensor); EXIF orientation is applied, as ``predict`` does, so the
    boxes (XYXY pixels of that image) land where they belong. Each box gets its class colour
    and a label "name 0.87"; detections scoring below ``score_threshold`` are left out.
    """
    canvas = Image.fromarray(load_image(image)).convert("RGB")
    shown = select(detections.to("cpu"), score_threshold)
    width, height = canvas.size
    line = max(2, round(max(width, height) / 400))
    font = _font(max(11, round(max(width, height) / 60)))
    pen = ImageDraw.Draw(canvas)
    # Lowest scores first so the most confident boxes and labels end up on top.
    for index in reversed(range(len(shown))):
        x1, y1, x2, y2 = shown.boxes[index].tolist()
        colour = class_colour(int(shown.labels[index]))
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = f"{shown.label_names[index]} {float(shown.scores[index]):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(1, line // 2 + 1)
        label_top = y1 - text_h - 2 * pad if y1 - text_h - 2 * pad >= 0 else y1
        label_left = min(max(0.0, x1), max(0.0, width - text_w - 2 * pad))
        pen.rectangle((label_left, label_top, label_left + text_w + 2 * pad, label_top + text_h + 2 * pad),
                      fill=colour)
        pen.text((label_left + pad - left, label_top + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas
