"""Reading user images: conversions where the meaning is clear, clear errors otherwise."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dyhead_zoo.data.images import load_image


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)


def test_path_pil_and_array_agree(tmp_path, rgb):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    for source in (path, str(path), Image.fromarray(rgb), rgb):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (21, 34, 3)
        np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_replicated(tmp_path, rgb):
    gray = rgb[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    for source in (tmp_path / "g.png", gray, gray[:, :, None]):
        np.testing.assert_array_equal(load_image(source), np.repeat(gray[:, :, None], 3, axis=2))


def test_rgba_drops_alpha(tmp_path, rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(load_image(rgba), rgb)


def test_sixteen_bit_keeps_the_high_byte(tmp_path):
    values = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    expected = np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(load_image(tmp_path / "d.png"), expected)
    np.testing.assert_array_equal(load_image(np.repeat(values[:, :, None], 3, axis=2)), expected)


def test_palette_image_is_expanded(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "x.jpg")


def test_truncated_file(tmp_path, rgb):
    big = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("array,message", [
    (np.zeros((0, 5, 3), np.uint8), "empty image"),
    (np.zeros((5, 5, 2), np.uint8), "HxWx3"),
    (np.zeros((5, 5, 3), np.float32), "uint8"),
])
def test_bad_arrays(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_wrong_type():
    with pytest.raises(TypeError, match="path, PIL.Image or numpy array"):
        load_image(42)
