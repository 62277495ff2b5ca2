"""SamPredictor: official API and behaviour on the tiny model; parity with the official predictor on ViT-B."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from sam_hf import SamHFConfig, SamHFModel, SamHFProcessor, SamPredictor


@pytest.fixture
def predictor(tiny_model, photos) -> SamPredictor:
    predictor = SamPredictor(tiny_model)
    predictor.set_image(photos["chelsea"])  # (300, 451)
    return predictor


def test_predict_shapes_and_types(predictor):
    point, label = np.array([[200, 150]]), np.array([1])
    masks, scores, low_res = predictor.predict(point_coords=point, point_labels=label)
    assert masks.shape == (3, 300, 451) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert low_res.shape == (3, 32, 32) and low_res.dtype == np.float32
    masks, scores, low_res = predictor.predict(box=np.array([10, 20, 200, 250]), multimask_output=False)
    assert masks.shape == (1, 300, 451) and scores.shape == (1,) and low_res.shape == (1, 32, 32)
    logits, _, _ = predictor.predict(point_coords=point, point_labels=label, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (3, 300, 451)
    assert predictor.original_size == (300, 451) and predictor.input_size == (85, 128)
    assert predictor.get_image_embedding().shape == (1, 32, 8, 8)
    assert predictor.is_image_set and predictor.device == torch.device("cpu")


def test_predict_equals_processor_and_model(predictor, tiny_model, photos):
    """The predictor is the processor + model path with a cached embedding."""
    processor = predictor.processor
    coords, labels, box = (
        np.array([[200.0, 150.0], [30.0, 40.0]]),
        np.array([1, 0]),
        np.array([10, 20, 300, 250]),
    )
    masks, scores, low_res = predictor.predict(
        coords, labels, box, multimask_output=False, return_logits=True
    )
    batch = processor([photos["chelsea"]], input_points=[coords], input_labels=[labels], input_boxes=[[box]])
    with torch.inference_mode():
        outputs = tiny_model(**batch, multimask_output=False)
    torch.testing.assert_close(torch.as_tensor(low_res), outputs.pred_masks[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(scores), outputs.iou_scores[0, 0], atol=1e-5, rtol=0)
    expected = processor.post_process_masks(
        outputs.pred_masks, batch["original_sizes"], batch["reshaped_input_sizes"], binarize=False
    )[0][0]
    torch.testing.assert_close(torch.as_tensor(masks), expected, atol=1e-4, rtol=0)


def test_image_is_encoded_once(tiny_model, photos, monkeypatch):
    calls = []
    hook = tiny_model.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    predictor = SamPredictor(tiny_model)
    predictor.set_image(photos["coffee"])
    for x in (10, 100, 300):
        predictor.predict(np.array([[x, 50]]), np.array([1]))
    predictor.predict(box=np.array([0, 0, 50, 50]))
    hook.remove()
    assert calls == [(1, 3, 128, 128)]


def test_predict_torch_batches_prompts(predictor):
    boxes = np.array([[10, 20, 200, 250], [100, 100, 400, 290], [0, 0, 451, 300]])
    transformed = torch.as_tensor(predictor.processor.transform_boxes(boxes, predictor.original_size)).float()
    masks, scores, low_res = predictor.predict_torch(None, None, boxes=transformed, multimask_output=True)
    assert masks.shape == (3, 3, 300, 451) and masks.dtype == torch.bool
    assert scores.shape == (3, 3) and low_res.shape == (3, 3, 32, 32)
    for i, box in enumerate(boxes):
        single_masks, single_scores, single_low = predictor.predict(box=box)
        torch.testing.assert_close(low_res[i], torch.as_tensor(single_low), atol=1e-5, rtol=0)
        torch.testing.assert_close(scores[i], torch.as_tensor(single_scores), atol=1e-5, rtol=0)


def test_mask_prompt_and_image_inputs(predictor, tiny_model, photos):
    _, _, low_res = predictor.predict(np.array([[200, 150]]), np.array([1]))
    masks, scores, _ = predictor.predict(np.array([[200, 150]]), np.array([1]), mask_input=low_res[[0]])
    assert masks.shape == (3, 300, 451)
    # The workaround the error message suggests for a full-size binary mask.
    logits = (20 * predictor.processor.mask_to_label(masks[0], (300, 451)) - 10)[None].numpy()
    assert predictor.predict(mask_input=logits, multimask_output=False)[0].shape == (1, 300, 451)
    # set_torch_image with the official transform equals set_image; BGR input is flipped back.
    reference = predictor.get_image_embedding().clone()
    image = photos["chelsea"]
    other = SamPredictor(tiny_model)
    resized = torch.as_tensor(ResizeLongestSide(128).apply_image(image)).permute(2, 0, 1)[None]
    other.set_torch_image(resized, image.shape[:2])
    torch.testing.assert_close(other.get_image_embedding(), reference)
    assert other.input_size == predictor.input_size and other.original_size == (300, 451)
    other.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(other.get_image_embedding(), reference)
    other.reset_image()
    assert not other.is_image_set and other.features is None and other.original_size is None


def test_cached_embedding_can_feed_decoder_training(predictor, tiny_model):
    """Embeddings from the predictor are ordinary tensors: the decoder trains on them."""
    embedding = predictor.get_image_embedding()
    assert not embedding.is_inference()
    outputs = tiny_model(
        image_embeddings=embedding,
        input_points=torch.tensor([[[[40.0, 30.0]]]]),
        input_labels=torch.tensor([[[1]]]),
        labels=torch.zeros(1, 1, 32, 32),
    )
    outputs.loss.backward()
    assert tiny_model.mask_decoder.iou_prediction_head.layers[0].weight.grad is not None


def test_transform_attribute_matches_official_resize_longest_side(predictor, photos):
    """Code written against the official `predictor.transform` keeps working, bit for bit."""
    official, ours = ResizeLongestSide(128), predictor.transform
    image, size = photos["coffee"], (400, 600)
    np.testing.assert_array_equal(ours.apply_image(image), official.apply_image(image))
    coords = np.array([[0.0, 0.0], [599.0, 399.0], [123.4, 56.7]])
    boxes = np.array([[10.0, 20.0, 300.0, 250.0], [0.0, 0.0, 600.0, 400.0]])
    np.testing.assert_array_equal(ours.apply_coords(coords, size), official.apply_coords(coords, size))
    np.testing.assert_array_equal(ours.apply_boxes(boxes[0], size), official.apply_boxes(boxes[0], size))
    torch_boxes = torch.as_tensor(boxes, dtype=torch.float32)
    assert torch.equal(
        ours.apply_boxes_torch(torch_boxes, size), official.apply_boxes_torch(torch_boxes, size)
    )


def test_encoder_dtype_runs_a_converted_copy_and_keeps_float32_features(tiny_model, photos):
    """The bf16 encoder is the predictor's own copy: the caller's model keeps float32, and a float32
    predictor built later on the same model gives exactly the float32 embedding."""
    reference = SamPredictor(copy.deepcopy(tiny_model))
    reference.set_image(photos["coffee"])
    predictor = SamPredictor(tiny_model, encoder_dtype=torch.bfloat16)
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}
    predictor.set_image(photos["coffee"])
    features = predictor.get_image_embedding()
    assert features.dtype == torch.float32
    assert not torch.equal(features, reference.get_image_embedding())
    # bf16 has an 8-bit mantissa: the encoder output agrees to a few percent of its scale.
    scale = reference.get_image_embedding().abs().max()
    assert (features - reference.get_image_embedding()).abs().max() < 0.1 * scale
    _, scores, _ = predictor.predict(np.array([[100, 100]]), np.array([1]))
    assert scores.dtype == np.float32
    later = SamPredictor(tiny_model)
    later.set_image(photos["coffee"])
    assert torch.equal(later.get_image_embedding(), reference.get_image_embedding())
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}


def test_follows_a_peft_adapter(tiny_model, photos):
    """A PEFT-wrapped model (unmerged LoRA, non-zero B) is predicted with its adapter: the same as the
    merged model, different from the base."""
    from sam_hf.training.lora import apply_lora

    base = SamPredictor(copy.deepcopy(tiny_model))
    torch.manual_seed(2)
    peft_model = apply_lora(tiny_model, r=4, init_lora_weights=False, verbose=False).eval()
    adapted = SamPredictor(peft_model)
    merged = SamPredictor(copy.deepcopy(peft_model).merge_and_unload())
    prompt = {"point_coords": np.array([[200, 100]]), "point_labels": np.array([1]), "return_logits": True}
    outputs = {}
    for name, predictor in (("base", base), ("adapted", adapted), ("merged", merged)):
        predictor.set_image(photos["coffee"])
        outputs[name] = predictor.predict(**prompt)
    np.testing.assert_allclose(outputs["adapted"][2], outputs["merged"][2], atol=1e-4)
    np.testing.assert_allclose(outputs["adapted"][1], outputs["merged"][1], atol=1e-4)
    assert np.abs(outputs["adapted"][2] - outputs["base"][2]).max() > 0.1


def test_processor_defaults_to_the_model_config(tiny_model):
    assert (
        SamPredictor(tiny_model).processor.to_dict() == SamHFProcessor(image_size=128, mask_size=32).to_dict()
    )
    custom = SamHFProcessor(image_size=128, mask_size=32, pixel_mean=(0.0, 0.0, 0.0))
    assert SamPredictor(tiny_model, processor=custom).processor is custom


def test_errors_before_an_image_is_set(tiny_model):
    predictor = SamPredictor(tiny_model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict_torch(None, None, boxes=torch.zeros(1, 4))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_input": np.zeros((1, 300, 451), np.float32)}, "shape \\(1, 32, 32\\).* full-size mask"),
        ({"mask_input": np.zeros((300, 451), bool)}, "shape \\(1, 32, 32\\)"),
        (
            {"mask_input": np.zeros((32, 32), np.float32)},
            "low_res_logits\\[\\[i\\]\\].* got shape \\(32, 32\\)",
        ),
        ({"mask_input": np.zeros((1, 32, 32), bool)}, "binary mask"),
        ({"mask_input": np.ones((1, 32, 32), np.float32)}, "pass logits, not 0/1 values"),
        ({"point_coords": np.array([[1, 1]])}, "given together"),
        (
            {"point_coords": np.array([[500, 1]]), "point_labels": np.array([1])},
            "point_coords must be XY pixels inside",
        ),
        ({"point_coords": np.array([[5, 1]]), "point_labels": np.array([3])}, "point_labels must hold 1"),
        (
            {"point_coords": np.array([[5, 1], [2, 2]]), "point_labels": np.array([1])},
            "point_labels must have one label",
        ),
        (
            {"point_coords": np.array([5, 1]), "point_labels": np.array([1])},
            "point_coords must have shape \\(num_points, 2\\)",
        ),
        ({"box": np.array([50, 10, 20, 30])}, "box must be XYXY with x1 >= x0"),
        ({"box": np.array([[0, 0, 5, 5], [1, 1, 6, 6]])}, "one XYXY box of shape \\(4,\\)"),
    ],
)
def test_bad_prompts_raise_helpful_errors(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_bad_images_and_tensors_raise(predictor, tiny_model):
    with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR'"):
        predictor.set_image(np.zeros((4, 4, 3), np.uint8), image_format="rgb")
    with pytest.raises(TypeError, match="dtype uint8, uint16, float"):
        predictor.set_image(np.full((4, 4, 3), 4000, np.int64))
    with pytest.raises(ValueError, match="max\\(h, w\\) == 128"):
        predictor.set_torch_image(torch.zeros(1, 3, 64, 100), (64, 100))
    with pytest.raises(ValueError, match="boxes must be a tensor of shape \\(B, 4\\)"):
        predictor.predict_torch(None, None, boxes=torch.zeros(1, 1, 4))
    with pytest.raises(TypeError, match="encoder_dtype"):
        SamPredictor(tiny_model, encoder_dtype="bf16")


# ---------------------------------------------------------------------- parity with the official predictor

PARITY_PHOTOS = ("astronaut", "chelsea")  # square (512, 512) and non-square (300, 451)


@pytest.fixture(scope="session")
def vit_b_predictors(official_vit_b, photos):
    """`get(name) -> (official predictor, ours)` with the photo set: each photo is encoded once per
    implementation per session, on first use."""
    from segment_anything import SamPredictor as OfficialPredictor

    model = SamHFModel(SamHFConfig.from_preset("vit_b"))
    model.load_state_dict(official_vit_b.state_dict(), strict=True)
    model.eval()
    pairs = {}

    def get(name: str):
        if name not in pairs:
            official, ours = OfficialPredictor(official_vit_b), SamPredictor(model)
            official.set_image(photos[name])
            ours.set_image(photos[name])
            pairs[name] = (official, ours)
        return pairs[name]

    return get


def _prompt_cases(height: int, width: int) -> list[dict]:
    rng = np.random.default_rng(height * width)
    box = np.array([0.2 * width, 0.15 * height, 0.8 * width, 0.9 * height])
    points = rng.uniform(0.1, 0.9, size=(5, 2)) * np.array([width, height])
    return [
        {"point_coords": points[:1], "point_labels": np.array([1])},
        {"point_coords": points[:1], "point_labels": np.array([1]), "multimask_output": False},
        {"point_coords": points, "point_labels": np.array([1, 1, 0, 1, 0]), "multimask_output": False},
        {"point_coords": points[:3], "point_labels": np.array([1, 0, 0])},
        {"box": box, "multimask_output": False},
        {"box": box},
        {"box": box, "point_coords": points[:2], "point_labels": np.array([1, 0]), "multimask_output": False},
    ]


def _assert_parity(official_out, our_out):
    official_masks, official_scores, official_low = official_out
    masks, scores, low = our_out
    assert masks.shape == official_masks.shape and masks.dtype == official_masks.dtype == bool
    np.testing.assert_allclose(low, official_low, atol=1e-3, rtol=0)
    np.testing.assert_allclose(scores, official_scores, atol=1e-3, rtol=0)
    assert (masks == official_masks).mean() >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY_PHOTOS)
def test_parity_with_official_predictor(vit_b_predictors, name):
    """Low-res logits and IoU scores within 1e-3 absolute; binarised full-size masks agree on >= 99.99%."""
    official, ours = vit_b_predictors(name)
    torch.testing.assert_close(ours.get_image_embedding(), official.get_image_embedding(), atol=1e-3, rtol=0)
    assert ours.input_size == official.input_size and ours.original_size == official.original_size
    for case in _prompt_cases(*official.original_size):
        official_out = official.predict(**case)
        _assert_parity(official_out, ours.predict(**case))
        # A mask prompt from the previous call's best low-res logits, single-mask refinement.
        best = official_out[2][[int(np.argmax(official_out[1]))]]
        refined = {**case, "mask_input": best, "multimask_output": False}
        _assert_parity(official.predict(**refined), ours.predict(**refined))


@pytest.mark.slow
def test_batched_boxes_parity_with_official_predict_torch(vit_b_predictors):
    official, ours = vit_b_predictors("chelsea")
    boxes = np.array([[10, 20, 200, 250], [100, 100, 400, 290], [0, 0, 451, 300]], dtype=np.float64)
    official_boxes = official.transform.apply_boxes_torch(torch.as_tensor(boxes), official.original_size)
    our_boxes = ours.processor.transform_boxes(torch.as_tensor(boxes), ours.original_size)
    torch.testing.assert_close(our_boxes, official_boxes, atol=0, rtol=0)
    with torch.no_grad():
        expected = official.predict_torch(None, None, boxes=official_boxes.float())
    got = ours.predict_torch(None, None, boxes=our_boxes.float())
    assert got[0].shape == expected[0].shape == (3, 3, 300, 451)
    torch.testing.assert_close(got[2], expected[2], atol=1e-3, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-3, rtol=0)
    assert (got[0] == expected[0]).float().mean() >= 0.9999
