"""SamHFProcessor: pixel values and coordinates equal official SAM and transformers; alignment; errors; IO."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from sam_hf import SamHFConfig, SamHFProcessor

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)


def _official_pixel_values(image: np.ndarray, size: int = 1024) -> torch.Tensor:
    """Official SamPredictor.set_image preprocessing: ResizeLongestSide, then Sam.preprocess."""
    resized = torch.as_tensor(ResizeLongestSide(size).apply_image(image)).permute(2, 0, 1)
    normalized = (resized - SAM_MEAN) / SAM_STD
    h, w = normalized.shape[-2:]
    return torch.nn.functional.pad(normalized, (0, size - w, 0, size - h))[None]


@pytest.fixture(scope="module")
def processor() -> SamHFProcessor:
    return SamHFProcessor()


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_pixel_values_equal_official_exactly(processor, photos, name):
    image = photos[name]
    pixel_values, original_sizes, reshaped = processor.preprocess_images(image)
    assert pixel_values.shape == (1, 3, 1024, 1024)
    assert pixel_values.dtype == torch.float32
    assert original_sizes.tolist() == [list(image.shape[:2])]
    assert reshaped.tolist() == [list(ResizeLongestSide.get_preprocess_shape(*image.shape[:2], 1024))]
    # Same PIL resize and the same float32 operations: bitwise equal.
    assert torch.equal(pixel_values, _official_pixel_values(image))


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_pixel_values_match_transformers(processor, photos, name):
    from transformers import SamImageProcessor, SamImageProcessorPil

    image = photos[name]
    ours = processor(image)
    pil = SamImageProcessorPil()(image, return_tensors="pt")
    fast = SamImageProcessor()(image, return_tensors="pt")
    assert ours["original_sizes"].tolist() == pil["original_sizes"].tolist()
    assert ours["reshaped_input_sizes"].tolist() == pil["reshaped_input_sizes"].tolist()
    # PIL backend: the same resize; transformers rescales to [0, 1] first, so float rounding only.
    torch.testing.assert_close(ours["pixel_values"], pil["pixel_values"], atol=1e-6, rtol=0)
    # torchvision backend: its uint8 bilinear resize rounds a few pixels differently, by at most one
    # uint8 step (1 / 57 after normalisation); the mean difference stays tiny.
    difference = (ours["pixel_values"] - fast["pixel_values"]).abs()
    assert difference.max() <= 1.0 / 57.0 + 1e-5
    assert difference.mean() < 1e-5


def test_batch_of_different_sizes_and_image_forms(processor, photos):
    rgb = photos["chelsea"]
    gray = rgb.mean(-1).astype(np.uint8)
    images = [
        rgb,
        Image.fromarray(rgb),
        gray,  # (H, W)
        gray[..., None],  # (H, W, 1)
        np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], -1),  # RGBA
        Image.fromarray(rgb).convert("RGBA"),
        photos["astronaut"],
    ]
    batch = processor(images)
    assert batch["pixel_values"].shape == (7, 3, 1024, 1024)
    assert batch["original_sizes"].tolist() == [[300, 451]] * 6 + [[512, 512]]
    assert batch["reshaped_input_sizes"].tolist() == [[681, 1024]] * 6 + [[1024, 1024]]
    values = batch["pixel_values"]
    assert torch.equal(values[0], values[1])  # PIL == numpy
    assert torch.equal(values[0], values[4]) and torch.equal(values[0], values[5])  # alpha dropped
    assert torch.equal(values[2], values[3])
    resized_gray = torch.as_tensor(
        np.array(Image.fromarray(gray).resize((1024, 681), Image.Resampling.BILINEAR))
    )
    torch.testing.assert_close(
        values[2, :, :681] * SAM_STD + SAM_MEAN, resized_gray.float().expand(3, -1, -1)
    )
    assert torch.equal(values[0, :, 681:], torch.zeros(3, 1024 - 681, 1024))  # padding bottom only


def test_uint16_and_float_follow_the_documented_scaling(processor, photos):
    rgb = photos["astronaut"]
    reference = processor.preprocess_images(rgb)[0]
    as_float = processor.preprocess_images(rgb.astype(np.float32) / 255)[0]
    as_uint16 = processor.preprocess_images(rgb.astype(np.uint16) * 257)[0]  # 255 * 257 = 65535
    # Both scale to 0-255 and round to uint8 before resizing: the same pixels as the uint8 image, bit for bit.
    assert torch.equal(as_float, reference) and torch.equal(as_uint16, reference)


@pytest.mark.parametrize("seed", range(5))
def test_coords_and_boxes_equal_official_apply_coords(processor, seed):
    rng = np.random.default_rng(seed)
    official = ResizeLongestSide(1024)
    for _ in range(20):
        size = tuple(int(v) for v in rng.integers(1, 3000, size=2))
        coords = rng.uniform(0, 1, size=(7, 2)) * np.array([size[1], size[0]])
        boxes = np.sort(rng.uniform(0, 1, size=(5, 2, 2)) * np.array([size[1], size[0]]), axis=1).reshape(
            5, 4
        )
        np.testing.assert_array_equal(
            processor.transform_coords(coords, size), official.apply_coords(coords, size)
        )
        np.testing.assert_array_equal(
            processor.transform_boxes(boxes, size), official.apply_boxes(boxes, size)
        )
        torch.testing.assert_close(
            processor.transform_coords(torch.as_tensor(coords, dtype=torch.float32), size),
            official.apply_coords_torch(torch.as_tensor(coords, dtype=torch.float32), size),
            atol=0,
            rtol=0,
        )
        # A box's corners move exactly as points do.
        corners = processor.transform_coords(boxes.reshape(-1, 2, 2), size).reshape(-1, 4)
        np.testing.assert_array_equal(processor.transform_boxes(boxes, size), corners)


def test_prompts_are_transformed_padded_and_flagged(processor, photos):
    images = [photos["chelsea"], photos["astronaut"]]  # (300, 451) and (512, 512)
    batch = processor(
        images,
        input_points=[[[[10, 20]], [[30, 40], [50, 60]]], [[100, 200]]],
        input_labels=[[[1], [1, 0]], [1]],
        input_boxes=[[None, [0, 0, 451, 300]], [[10, 10, 20, 30]]],
    )
    scale_a, scale_b = 1024 / 451, 2.0
    assert batch["input_points"].shape == (2, 2, 2, 2)
    assert batch["input_labels"].shape == (2, 2, 2)
    assert batch["input_boxes"].shape == (2, 2, 4)
    assert batch["prompt_mask"].tolist() == [[True, True], [True, False]]
    assert batch["input_labels"].tolist() == [[[1, -10], [1, 0]], [[1, -10], [-10, -10]]]
    torch.testing.assert_close(batch["input_points"][0, 1, 1], torch.tensor([50 * scale_a, 60 * 681 / 300]))
    torch.testing.assert_close(batch["input_points"][1, 0, 0], torch.tensor([100 * scale_b, 200 * scale_b]))
    assert torch.isnan(batch["input_boxes"][0, 0]).all() and torch.isnan(batch["input_boxes"][1, 1]).all()
    torch.testing.assert_close(batch["input_boxes"][0, 1], torch.tensor([0.0, 0.0, 1024.0, 681.0]))


def test_processor_batch_runs_through_the_model(tiny_model, photos):
    processor = SamHFProcessor.from_model_config(tiny_model.config)
    assert (processor.image_size, processor.mask_size) == (128, 32)
    images = [photos["chelsea"], photos["coffee"]]
    batch = processor(
        images,
        input_points=[[[[10, 20]], [[30, 40], [50, 60]], [[5, 5]]], [[[100, 200]]]],
        input_labels=[[[1], [1, 0], [0]], [[1]]],
        input_boxes=[[[0, 0, 100, 100], None, None], [[10, 10, 300, 200]]],
    )
    with torch.inference_mode():
        outputs = tiny_model(**batch)
    assert outputs.pred_masks.shape == (2, 3, 3, 32, 32)
    assert torch.isfinite(outputs.pred_masks).all()
    masks = processor.post_process_masks(
        outputs.pred_masks,
        batch["original_sizes"],
        batch["reshaped_input_sizes"],
        prompt_mask=batch["prompt_mask"],
    )
    assert [tuple(m.shape) for m in masks] == [(3, 3, 300, 451), (1, 3, 400, 600)]
    assert masks[0].dtype == torch.bool
    # A padded prompt changes nothing for the real ones (its tokens are masked out exactly).
    alone = processor(
        [photos["coffee"]],
        input_points=[[[[100, 200]]]],
        input_labels=[[[1]]],
        input_boxes=[[[10, 10, 300, 200]]],
    )
    with torch.inference_mode():
        single = tiny_model(**alone).pred_masks
    torch.testing.assert_close(single[0, 0], outputs.pred_masks[1, 0], atol=1e-5, rtol=0)
    # Mask prompts from the previous call (one per real prompt) and an image without prompts.
    refine = processor(
        images + [photos["astronaut"]],
        input_points=[[[[10, 20]], [[30, 40], [50, 60]], [[5, 5]]], [[[100, 200]]], []],
        input_labels=[[[1], [1, 0], [0]], [[1]], []],
        input_masks=[outputs.pred_masks[0, :, 0], outputs.pred_masks[1, :1, 0], np.zeros((0, 32, 32))],
    )
    assert refine["input_masks"].shape == (3, 3, 32, 32)
    assert refine["prompt_mask"].tolist() == [[True] * 3, [True, False, False], [False] * 3]
    with torch.inference_mode():
        refined = tiny_model(**refine, multimask_output=False).pred_masks
    masks = processor.post_process_masks(
        refined, refine["original_sizes"], refine["reshaped_input_sizes"], prompt_mask=refine["prompt_mask"]
    )
    assert [tuple(m.shape) for m in masks] == [(3, 1, 300, 451), (1, 1, 400, 600), (0, 1, 512, 512)]


def test_post_process_masks_equals_official_postprocess(processor, official_vit_b):
    logits = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    for original, reshaped in (
        ((300, 451), (681, 1024)),
        ((512, 512), (1024, 1024)),
        ((1280, 720), (1024, 576)),
    ):
        expected = official_vit_b.postprocess_masks(logits, reshaped, original)
        ours = processor.post_process_masks(logits[None], [original], [reshaped], binarize=False)[0]
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
        assert torch.equal(
            processor.post_process_masks(logits[None], [original], [reshaped])[0], expected > 0
        )
        as_list = processor.post_process_masks([logits.numpy()], [original], [reshaped], binarize=False)[0]
        torch.testing.assert_close(as_list, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(720, 1280), (1280, 720)])
def test_alignment_on_a_non_square_image(size):
    """A bright rectangle survives mask_to_label -> post_process_masks, and its corners land where the padded
    model-frame image has them (catches H/W flips and padding on the wrong side). SAM's frame: no model runs."""
    processor = SamHFProcessor()
    height, width = size
    x0, y0, x1, y1 = (width * 3) // 10, (height * 2) // 10, (width * 7) // 10, (height * 9) // 10
    image = np.zeros((height, width, 3), np.uint8)
    image[y0:y1, x0:x1] = 255
    rectangle = np.zeros((height, width), bool)
    rectangle[y0:y1, x0:x1] = True

    label = processor.mask_to_label(rectangle, size)
    assert label.shape == (256, 256)
    logits = (label * 20 - 10)[None, None, None]  # (1, 1, 1, 256, 256) confident logits
    pixel_values, original_sizes, reshaped = processor.preprocess_images(image)
    back = processor.post_process_masks(logits, original_sizes, reshaped)[0][0, 0].numpy()
    iou = (back & rectangle).sum() / (back | rectangle).sum()
    assert iou > 0.95

    # The box's corners in the model frame bracket the bright region of pixel_values.
    box = processor.transform_boxes(np.array([x0, y0, x1, y1]), size)
    bright = (pixel_values[0, 0] > 0).nonzero()
    ys, xs = bright[:, 0], bright[:, 1]
    assert abs(xs.min().item() - box[0]) <= 1 and abs(xs.max().item() + 1 - box[2]) <= 1
    assert abs(ys.min().item() - box[1]) <= 1 and abs(ys.max().item() + 1 - box[3]) <= 1
    # A point at the rectangle's centre lands in the bright region and in the label.
    centre = processor.transform_coords(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), size)
    assert pixel_values[0, 0, int(centre[1]), int(centre[0])] > 0
    assert label[int(centre[1]) // 4, int(centre[0]) // 4] == 1
    # Label is zero in the padded region.
    new_h, new_w = reshaped[0].tolist()
    assert label[(new_h + 3) // 4 :].sum() == 0 and label[:, (new_w + 3) // 4 :].sum() == 0


_IMG = np.zeros((40, 60, 3), np.uint8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"images": np.full((40, 60, 3), 4000, np.int64)},
            TypeError,
            "images\\[0\\] must have dtype uint8, uint16",
        ),
        ({"images": np.zeros((0, 60, 3), np.uint8)}, ValueError, "non-empty"),
        ({"images": np.zeros((2, 40, 60, 3), np.uint8)}, ValueError, "got shape \\(2, 40, 60, 3\\)"),
        ({"images": np.zeros((3, 40, 60), np.uint8)}, ValueError, "channels-first"),
        ({"images": np.full((40, 60, 3), 2.0, np.float32)}, ValueError, "float image .* in \\[0, 1\\]"),
        (
            {"images": [_IMG, "photo.png"]},
            FileNotFoundError,
            "images\\[1\\] \\(photo.png\\) must be an existing image file",
        ),
        ({"images": [_IMG, 3]}, TypeError, "images\\[1\\] must be an image path, a PIL image .* got int"),
        ({"images": []}, ValueError, "non-empty list"),
        (
            {"input_points": [[[61, 10]]], "input_labels": [[1]]},
            ValueError,
            "input_points\\[0\\]\\[0\\] must be XY pixels inside",
        ),
        ({"input_points": [[[10, -1]]], "input_labels": [[1]]}, ValueError, "inside the image"),
        (
            {"input_points": [[[10, 10]]], "input_labels": [[2]]},
            ValueError,
            "input_labels\\[0\\]\\[0\\] must hold 1",
        ),
        ({"input_points": [[[10, 10], [5, 5]]], "input_labels": [[1]]}, ValueError, "one label per point"),
        ({"input_points": [[[10, 10]]]}, ValueError, "given together"),
        (
            {"input_points": [[[10, 10, 3]]], "input_labels": [[1]]},
            ValueError,
            "must have shape \\(num_points, 2\\)",
        ),
        ({"input_boxes": [[[30, 10, 20, 20]]]}, ValueError, "x1 >= x0 and y1 >= y0"),
        ({"input_boxes": [[[10, 30, 20, 20]]]}, ValueError, "x1 >= x0 and y1 >= y0"),
        ({"input_boxes": [[[10, 30, 20]]]}, ValueError, "shape \\(num_prompts, 4\\)"),
        ({"input_boxes": [[[0, 0, 5, 5]], [[0, 0, 5, 5]]]}, ValueError, "one entry per image \\(1\\), got 2"),
        (
            {
                "input_boxes": [[[0, 0, 5, 5], [0, 0, 6, 6]]],
                "input_points": [[[1, 1]]],
                "input_labels": [[1]],
            },
            ValueError,
            "same number of prompts",
        ),
        ({"input_masks": [np.zeros((1, 40, 60))]}, ValueError, "low-resolution mask logits of shape"),
        ({"return_tensors": "tf"}, ValueError, "return_tensors"),
    ],
)
def test_bad_input_raises_a_helpful_error(processor, kwargs, error, match):
    kwargs = {"images": [_IMG], **kwargs}
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_points_on_the_border_are_accepted(processor):
    batch = processor([_IMG], input_points=[[[0, 0], [60, 40]]], input_labels=[[1, 0]])
    expected = ResizeLongestSide(1024).apply_coords(np.array([60.0, 40.0]), (40, 60))
    assert expected[0] == 1024.0
    torch.testing.assert_close(batch["input_points"][0, 0, 1], torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize(
    ("mask", "size", "error", "match"),
    [
        (np.zeros((4, 5, 1), bool), None, ValueError, "\\(H, W\\)"),
        (np.zeros((4, 5), bool), (5, 4), ValueError, "original_size"),
        (np.zeros((4, 5), np.complex64), None, TypeError, "dtype complex64"),
    ],
)
def test_mask_to_label_rejects_bad_masks(processor, mask, size, error, match):
    with pytest.raises(error, match=match):
        processor.mask_to_label(mask, size)


def test_constructor_and_post_process_errors(processor):
    with pytest.raises(ValueError, match="image_size must be a multiple of mask_size"):
        SamHFProcessor(image_size=100, mask_size=32)
    with pytest.raises(ValueError, match="pixel_mean must have 3 values"):
        SamHFProcessor(pixel_mean=(1.0, 2.0))
    with pytest.raises(ValueError, match="masks must have shape \\(batch_size, point_batch_size"):
        processor.post_process_masks(torch.zeros(1, 3, 256, 256), [(4, 4)], [(4, 4)])


def test_save_and_load_round_trip(tmp_path):
    processor = SamHFProcessor(
        image_size=512, mask_size=128, pixel_mean=(1.0, 2.0, 3.0), pixel_std=(4.0, 5.0, 6.0)
    )
    path = processor.save_pretrained(tmp_path)
    assert json.loads(open(path).read())["processor_class"] == "SamHFProcessor"
    loaded = SamHFProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()


def test_from_dict_reads_the_saved_config_as_auto_image_processor_passes_it():
    processor = SamHFProcessor(image_size=512, mask_size=128)
    # transformers' AutoImageProcessor reads the file itself and calls from_dict with its own kwargs.
    assert SamHFProcessor.from_dict(processor.to_dict(), _from_auto=True).to_dict() == processor.to_dict()
    loaded, unused = SamHFProcessor.from_dict(
        processor.to_dict(), image_size=256, return_unused_kwargs=True, trust_remote_code=True
    )
    assert (loaded.image_size, loaded.mask_size, unused) == (256, 128, {"trust_remote_code": True})


def test_from_model_config_matches_vit_b_defaults():
    assert (
        SamHFProcessor.from_model_config(SamHFConfig.from_preset("vit_b")).to_dict()
        == SamHFProcessor().to_dict()
    )


def test_reads_transformers_processor_folders(tmp_path, photos):
    from transformers import SamImageProcessor, SamProcessor

    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(tmp_path / "processor")
    SamImageProcessor().save_pretrained(tmp_path / "image_processor")
    small = SamImageProcessor(size={"longest_edge": 512}, pad_size={"height": 512, "width": 512})
    small.save_pretrained(tmp_path / "small")
    for folder in ("processor", "image_processor"):
        loaded = SamHFProcessor.from_pretrained(tmp_path / folder)
        assert loaded.to_dict() == SamHFProcessor().to_dict()
    loaded = SamHFProcessor.from_pretrained(tmp_path / "small")
    assert (loaded.image_size, loaded.mask_size) == (512, 256)
    expected = small(photos["chelsea"], return_tensors="pt")["pixel_values"]
    assert (loaded(photos["chelsea"])["pixel_values"] - expected).abs().max() <= 1.0 / 57.0 + 1e-5


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        SamHFProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CLIPImageProcessor"})
    )
    with pytest.raises(ValueError, match="SamImageProcessor config"):
        SamHFProcessor.from_pretrained(tmp_path)
