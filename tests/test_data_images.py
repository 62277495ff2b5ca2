"""The one image rule (`sam_hf.data.images`): EXIF orientation, PIL modes, bit depths, and every consumer
(processor, dataset reader, embedding cache, data engine) reading an image the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf import SamHFProcessor
from sam_hf.data.images import load_image, to_rgb

_ORIENTATION = 0x0112


def _photo(height: int = 24, width: int = 40) -> np.ndarray:
    """An asymmetric RGB test card: every rotation or flip of it is a different array."""
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    image[:6, :10] = (255, 255, 255)  # a white block in the top-left corner
    return image


def _phone_jpeg(path, orientation: int) -> None:
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    Image.fromarray(_photo()).save(path, quality=95, exif=exif)


@pytest.mark.parametrize(("orientation", "upright_shape"), [(3, (24, 40, 3)), (6, (40, 24, 3))])
def test_exif_orientation_matches_datasets_decoding(tmp_path, orientation, upright_shape):
    import datasets

    path = tmp_path / f"phone-{orientation}.jpg"
    _phone_jpeg(path, orientation)
    decoded = np.asarray(datasets.Image().decode_example({"path": str(path), "bytes": None}).convert("RGB"))
    ours = to_rgb(path)
    assert ours.shape == decoded.shape == upright_shape
    np.testing.assert_array_equal(ours, decoded)
    assert not np.array_equal(ours, np.asarray(Image.open(path).convert("RGB")))  # the raw pixels differ
    assert load_image(str(path)).size == (upright_shape[1], upright_shape[0])


def test_pil_modes():
    rgb = _photo()
    gray = rgb[..., 0]
    expected_gray = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb).convert("RGBA")), rgb)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(gray)), expected_gray)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(gray).convert("LA")), expected_gray)
    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(to_rgb(palette), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0
    np.testing.assert_array_equal(to_rgb(palette), np.asarray(palette.convert("RGBA"))[..., :3])
    np.testing.assert_array_equal(
        to_rgb(Image.fromarray(gray > 100)), np.repeat((gray > 100)[..., None] * 255, 3, -1)
    )
    sixteen = np.full((3, 4), 40000, np.uint16)
    assert to_rgb(Image.fromarray(sixteen)).tolist() == np.full((3, 4, 3), 156).tolist()  # 155.6 rounded
    assert (
        to_rgb(Image.fromarray(sixteen.astype(np.int32))).tolist() == np.full((3, 4, 3), 156).tolist()
    )  # "I"
    assert (
        to_rgb(Image.fromarray(np.full((3, 4), 0.8, np.float32))).tolist() == np.full((3, 4, 3), 204).tolist()
    )


def test_array_forms():
    rgb = _photo()
    np.testing.assert_array_equal(to_rgb(np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)), rgb)
    np.testing.assert_array_equal(to_rgb(rgb[..., :1]), np.repeat(rgb[..., :1], 3, -1))
    assert to_rgb(np.array([[40000, 65535, 0]], np.uint16))[0, :, 0].tolist() == [156, 255, 0]
    # int64 0-255 data, as `datasets` decodes images stored as nested lists, is 8-bit.
    assert to_rgb(np.array([[0, 200, 255]], np.int64))[0, :, 0].tolist() == [0, 200, 255]
    assert to_rgb(np.array([[0.8, 1.0, 0.0]], np.float64))[0, :, 0].tolist() == [204, 255, 0]
    assert to_rgb(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    out = to_rgb(rgb[:, ::2])  # a strided view comes back C-contiguous
    assert out.flags["C_CONTIGUOUS"] and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.full((4, 5, 3), 300, np.int64), TypeError, "integers in 0-255, got int64 in \\[300, 300\\]"),
        (np.full((4, 5), 1.5, np.float32), ValueError, "in \\[0, 1\\], got range \\[1.5, 1.5\\]"),
        (np.zeros((3, 4, 5), np.uint8), ValueError, "channels-first"),
        (Image.fromarray(np.full((2, 2), 70000, np.int32)), ValueError, "16-bit values in \\[0, 65535\\]"),
        ("missing.png", FileNotFoundError, "photo must be an existing image file: 'missing.png'"),
    ],
)
def test_rejects_what_the_rule_cannot_read(image, error, match):
    with pytest.raises(error, match=match):
        to_rgb(image, "photo")


def test_unreadable_file_names_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a PNG")
    with pytest.raises(ValueError, match="broken.png must be a readable image file.*UnidentifiedImageError"):
        to_rgb(tmp_path / "broken.png", "broken.png")


def test_too_thin_image_is_refused_naming_it_and_the_limit(tmp_path):
    processor = SamHFProcessor(image_size=1024)
    with pytest.raises(ValueError, match="images\\[1\\] is 1x2049 \\(HxW\\).* 0 px at image_size=1024.*2048"):
        processor.preprocess_images([np.zeros((8, 8, 3), np.uint8), np.zeros((1, 2049, 3), np.uint8)])
    Image.fromarray(np.zeros((2049, 1, 3), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(ValueError, match="images\\[0\\] \\(.*thin.png\\) is 2049x1"):
        processor.preprocess_images(str(tmp_path / "thin.png"))
    assert processor.preprocess_images(np.zeros((1, 2048, 3), np.uint8))[2].tolist() == [[1, 1024]]


def _sixteen_bit_png(path) -> np.ndarray:
    yy, xx = np.mgrid[:32, :48]
    values = (xx * 1300 + yy * 40).astype(np.uint16)  # up to 62340: wraps when cast to uint8
    Image.fromarray(values).save(path)
    return values


def test_training_and_inference_read_16_bit_and_float_images_alike(tmp_path, tiny_model):
    """The dataset reader, the embedding cache and the predictor's processor give the same pixels."""
    import datasets

    from sam_hf.data.reader import to_instances
    from sam_hf.training.embeddings import cache_image_embeddings

    values = _sixteen_bit_png(tmp_path / "micro.png")
    expected = np.repeat(np.rint(values * (255 / 65535)).astype(np.uint8)[..., None], 3, -1)
    label = np.zeros((32, 48), np.uint8)
    label[4:20, 6:30] = 1
    dataset = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "micro.png")], "label": [Image.fromarray(label)]}
    ).cast_column("image", datasets.Image())
    row = dataset[0]
    assert row["image"].mode == "I;16"
    image, _ = to_instances(row)
    np.testing.assert_array_equal(image, expected)

    processor = SamHFProcessor.from_model_config(tiny_model.config)
    inference = processor.preprocess_images(str(tmp_path / "micro.png"))[0]
    torch.testing.assert_close(processor.preprocess_images(image)[0], inference, rtol=0, atol=0)
    cached = cache_image_embeddings(dataset, tiny_model, processor, str(tmp_path / "cache"))
    with torch.inference_mode():
        reference = tiny_model.get_image_embeddings(inference)[0]
    torch.testing.assert_close(cached[0]["image_embeddings"], reference, rtol=0, atol=1e-6)

    as_float = values.astype(np.float32) / 65535
    image, _ = to_instances({"image": as_float, "label": label})
    np.testing.assert_array_equal(image, expected)
    torch.testing.assert_close(processor.preprocess_images(as_float)[0], inference, rtol=0, atol=0)


def test_segment_and_generate_see_the_image_upright(tmp_path):
    """A click on the displayed (upright) phone photo is inside it, and the masks have its size."""
    import json

    from sam_hf.cli import main

    path = tmp_path / "phone.jpg"
    _phone_jpeg(path, 6)  # stored 24x40 (HxW), displayed 40x24
    out = tmp_path / "segment"
    assert main(["segment", str(path), "--model", "sam-hf-tiny", "--point", "10,35", "--out", str(out)]) == 0
    assert json.loads((out / "scores.json").read_text())["image_size"] == {"height": 40, "width": 24}
    assert Image.open(out / "overlay.png").size == (24, 40)
    out = tmp_path / "generate"
    main(["generate", str(path), "--model", "sam-hf-tiny", "--points-per-side", "2", "--out", str(out)])
    assert Image.open(out / "overlay.png").size == (24, 40)
