"""ImageTransform (decode, train augmentation, eval path), SeriesTransform and TextTransform."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.data import ImageTransform, SeriesTransform, TextTransform, load_image
from contrastkit.errors import InputError


def gradient_image(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    array = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 60.0)], 2
    )
    return Image.fromarray(array.astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_path_bytes_pil_and_grayscale(tmp_path):
    image = gradient_image()
    image.save(tmp_path / "a.png")
    from_path = load_image(tmp_path / "a.png")
    assert from_path.mode == "RGB" and from_path.size == (40, 30)
    assert load_image(str(tmp_path / "a.png")).tobytes() == image.tobytes()
    assert load_image(encoded(image, "PNG")).tobytes() == image.tobytes()
    assert load_image(image.convert("L")).mode == "RGB"


@pytest.mark.parametrize(
    ("item", "error", "match"),
    [
        (b"\xff\xd8\xff\xe0 not a jpeg", OSError, "cannot decode"),
        (b"", ValueError, "empty image bytes"),
        ("", ValueError, "empty image path"),
        ("/no/such/file.jpg", FileNotFoundError, "missing file"),
        (3, ValueError, "path, bytes or a PIL image"),
    ],
)
def test_decode_errors(item, error, match):
    with pytest.raises(error, match=match):
        load_image(item)


def test_truncated_jpeg_is_an_error():
    data = encoded(gradient_image(64, 64), "JPEG")
    with pytest.raises(OSError, match="cannot decode"):
        load_image(data[: len(data) // 2])


def test_eval_mode_shape_range_and_determinism():
    t = ImageTransform(size=16)
    out = t(gradient_image())
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, t(gradient_image(), generator=torch.Generator().manual_seed(5)))
    square = Image.new("RGB", (16, 16), (255, 0, 0))
    assert torch.equal(t(square)[0], torch.ones(16, 16)) and torch.equal(t(square)[1], -torch.ones(16, 16))


def test_eval_center_crop_keeps_the_middle():
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # a white middle third
    out = ImageTransform(size=10)(Image.fromarray(wide))
    assert torch.equal(out, torch.ones(3, 10, 10))


def test_train_mode_reproducible_with_generator_and_random_without():
    t = ImageTransform(size=24, train=True)
    image = gradient_image()
    a = t(image, generator=torch.Generator().manual_seed(0))
    b = t(image, generator=torch.Generator().manual_seed(0))
    c = t(image, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    outs = {t(image, generator=torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outs) == 8


def test_train_without_jitter_or_flip_is_a_crop_of_the_image():
    t = ImageTransform(size=30, train=True, scale=(1.0, 1.0), flip=False, color_jitter=0.0, ratio=(1.0, 1.0))
    image = gradient_image(30, 30)
    torch.testing.assert_close(t(image, generator=torch.Generator()), ImageTransform(size=30)(image))


def test_flip_happens_for_some_seeds():
    t = ImageTransform(size=30, train=True, scale=(1.0, 1.0), color_jitter=0.0, ratio=(1.0, 1.0))
    image = gradient_image(30, 30)
    plain = ImageTransform(size=30)(image)
    outs = [t(image, generator=torch.Generator().manual_seed(s)) for s in range(10)]
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, plain.flip(-1)) for o in outs)


def test_image_transform_argument_errors():
    with pytest.raises(InputError, match="size"):
        ImageTransform(size=0)
    with pytest.raises(InputError, match="scale"):
        ImageTransform(scale=(0.5, 1.5))
    with pytest.raises(InputError, match="color_jitter"):
        ImageTransform(color_jitter=1.0)
    with pytest.raises(InputError, match="train"):
        ImageTransform(train="yes")


def test_series_transform():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    out = SeriesTransform()(x)
    assert out.shape == (2, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out.mean(1), torch.zeros(2))
    torch.testing.assert_close(out[1], torch.zeros(4))
    torch.testing.assert_close(out[0].std(unbiased=False), torch.tensor(1.0))
    assert SeriesTransform(normalize=False)([1, 2, 3]).tolist() == [[1.0, 2.0, 3.0]]
    resampled = SeriesTransform(length=7, normalize=False)(np.array([0.0, 3.0]))
    torch.testing.assert_close(resampled, torch.tensor([[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]]))
    with pytest.raises(ValueError, match="NaN"):
        SeriesTransform()([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        SeriesTransform()(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="length"):
        SeriesTransform(length=1)


def test_text_transform():
    assert TextTransform()("  a   b \n c ") == "a b c"
    assert TextTransform(max_sentences=1)("A red star on a blue background. It is small.") == (
        "A red star on a blue background."
    )
    with pytest.raises(ValueError, match="whitespace"):
        TextTransform()("  \t")
    with pytest.raises(ValueError, match="empty caption"):
        TextTransform()("")
