"""Evaluation: exact metric values on known masks, NoC on a scripted model, the protocol on a tiny SamHF."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch
from transformers.utils import ModelOutput

from sam_hf.evaluation import (
    PROMPT_TYPES,
    EvaluationProtocol,
    SamSegmentation,
    evaluate_model,
    flat_metrics,
    results_table,
    timed_run,
    write_eval_results,
)
from sam_hf.evaluation import metric as metric_module
from sam_hf.processing_sam_hf import SamHFProcessor


def _mask(shape, rows=slice(None), cols=slice(None)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_metric_exact_iou_and_dice():
    reference = _mask((4, 4), slice(0, 2))  # 8 pixels
    half = _mask((4, 4), slice(0, 2), slice(0, 2))  # 4 pixels inside the reference
    shifted = _mask((4, 4), slice(1, 3))  # 8 pixels, 4 shared
    empty = np.zeros((4, 4), dtype=bool)
    result = SamSegmentation().compute(
        predictions=[half, shifted, empty, empty],
        references=[reference, reference, reference, empty],
        prompt=["a", "a", "b", "b"],
    )
    # a: IoU 4/8 and 4/12, Dice 8/12 and 8/16; b: IoU 0 and (empty on empty) 1
    assert result["a"] == pytest.approx(
        {"mean_iou": (1 / 2 + 1 / 3) / 2, "mean_dice": (2 / 3 + 1 / 2) / 2, "num_objects": 2}
    )
    assert result["b"] == {"mean_iou": 0.5, "mean_dice": 0.5, "num_objects": 2}


def test_metric_loads_offline_with_evaluate_load(monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    loaded = evaluate.load(metric_module.__file__)
    assert isinstance(loaded, evaluate.Metric)
    reference = _mask((6, 6), slice(0, 3))
    for metric in (loaded, SamSegmentation()):
        metric.add(prediction=_mask((6, 6), slice(0, 2)), reference=reference)
        assert metric.compute() == {"mask": {"mean_iou": 2 / 3, "mean_dice": 0.8, "num_objects": 1}}


def test_metric_noc_and_miou_per_click():
    reference = _mask((10, 10), slice(0, 10))
    metric = SamSegmentation()
    for click in range(1, 5):
        # object 0 reaches IoU 0.5, 0.7, 0.9, 1.0; object 1 stays at 0.8
        rows = {1: 5, 2: 7, 3: 9, 4: 10}[click]
        metric.add_batch(
            predictions=[_mask((10, 10), slice(0, rows)), _mask((10, 10), slice(0, 8))],
            references=[reference, reference],
            prompt="clicks",
            object_id=[7, 3],
            click=click,
        )
    result = metric.compute(iou_thresholds=(0.85, 0.9, 0.95))["clicks"]
    assert result["miou_per_click"] == pytest.approx([0.65, 0.75, 0.85, 0.9])
    assert result["mean_iou"] == pytest.approx(0.9)  # at the last click
    assert result["noc@85"] == 3.5 and result["nof@85"] == 1  # object 1 never gets there: counts 4 clicks
    assert result["noc@90"] == 3.5 and result["noc@95"] == 4.0 and result["nof@95"] == 1


def test_metric_rejects_bad_input():
    metric = SamSegmentation()
    with pytest.raises(ValueError, match="no masks to measure"):
        metric.compute()
    with pytest.raises(ValueError, match=r"predictions\[0\] and references\[0\] must be \(H, W\) masks"):
        metric.add_batch(predictions=[np.zeros((2, 2))], references=[np.zeros((3, 2))])
    with pytest.raises(ValueError, match="object_id must be one value or one per mask"):
        metric.add_batch(predictions=[np.zeros((2, 2))], references=[np.zeros((2, 2))], object_id=[1, 2])
    metric = SamSegmentation()
    reference = np.ones((2, 2))
    metric.add_batch(predictions=[reference], references=[reference], prompt="c", object_id=0, click=1)
    metric.add_batch(predictions=[reference], references=[reference], prompt="c", object_id=1, click=2)
    with pytest.raises(ValueError, match="every object needs a mask for each click"):
        metric.compute()


def test_protocol_name_lists_changed_settings():
    assert EvaluationProtocol().name == "sam_hf-interactive-v1"
    assert EvaluationProtocol(prompts=("box",)).name == "sam_hf-interactive-v1"
    assert EvaluationProtocol(max_clicks=5, seed=1).name == "sam_hf-interactive-v1[seed=1,max_clicks=5]"
    assert EvaluationProtocol().to_dict()["max_clicks"] == 20
    with pytest.raises(ValueError, match="prompts must be a non-empty subset"):
        EvaluationProtocol(prompts=("lasso",))


class ScriptedModel(torch.nn.Module):
    """A stand-in for SamHFModel on 32x32 images (mask_size 32, so masks are its logits > 0 as they are).

    Object 0 (rows 0..9 of the image) gets rows [0, n) right after n clicks (IoU n/10); object 1 always gets
    half of its rows (IoU 0.5). On the first click the right mask is the second of three, and has the highest
    predicted IoU. From click 2 on, it checks that its previous logits come back as `input_masks`.
    """

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.previous = None
        self.calls = []

    def get_image_features(self, pixel_values):
        return {"image_embeddings": torch.zeros(pixel_values.shape[0], 1, 2, 2)}

    def forward(self, image_embeddings, input_points, input_labels, input_masks=None, multimask_output=True):
        clicks = int((input_labels[0, 0] != -10).sum())
        self.calls.append((clicks, multimask_output, input_masks is not None))
        if clicks > 1:
            torch.testing.assert_close(input_masks, self.previous)
        logits = torch.full((2, 32, 32), -1.0)
        logits[0, :clicks] = 1.0
        logits[1, 20:25] = 1.0
        if multimask_output:
            masks = torch.stack([torch.full_like(logits, -1.0), logits, torch.full_like(logits, -1.0)], dim=1)
            scores = torch.tensor([[0.1, 0.9, 0.2]] * 2)
        else:
            masks, scores = logits[:, None], torch.ones(2, 1)
        self.previous = logits[None]
        return ModelOutput(pred_masks=masks[None], iou_scores=scores[None])


def test_clicks_feed_logits_back_and_noc_matches_script():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    masks = np.stack([_mask((32, 32), slice(0, 10)), _mask((32, 32), slice(20, 30))])
    model = ScriptedModel()
    protocol = EvaluationProtocol(prompts=("clicks",), max_clicks=12)
    result = evaluate_model(model, SamHFProcessor(image_size=32, mask_size=32), [(image, masks)], protocol)
    clicks = result["clicks"]
    assert clicks["miou_per_click"] == pytest.approx([(min(k, 10) / 10 + 0.5) / 2 for k in range(1, 13)])
    # object 0: IoU 0.9 at click 9; object 1 never reaches 0.85: counts 12
    assert clicks["noc@85"] == (9 + 12) / 2 and clicks["noc@90"] == (9 + 12) / 2
    assert clicks["nof@90"] == 1
    # one decoder call per click for both objects; multimask only for the first click; once object 0 is
    # perfect (click 10) it gets padding points, not clicks
    assert model.calls[0] == (1, True, False)
    assert model.calls[1:] == [(min(k, 10), False, True) for k in range(2, 13)]


class OracleModel(torch.nn.Module):
    """A perfect corrector on 32x32 images (mask_size 32, so the model frame is the image's pixels).

    Click 1: a 7x7 square around the point (part object, part background). Every later click must land in
    an error region of the previous mask with the matching label (else the protocol placed it wrong), and
    fixes exactly the connected error component under it; the previous mask must come back as
    `input_masks`. So with a right protocol its IoU can only rise with each click.
    """

    def __init__(self, gt: np.ndarray):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.gt = gt  # (P, 32, 32) bool
        self.previous = None

    def get_image_features(self, pixel_values):
        return {"image_embeddings": torch.zeros(pixel_values.shape[0], 1, 2, 2)}

    def forward(self, image_embeddings, input_points, input_labels, input_masks=None, multimask_output=True):
        from scipy import ndimage

        points, labels = input_points[0].numpy(), input_labels[0].numpy()  # (P, N, 2), (P, N)
        if input_masks is None:
            masks = np.zeros_like(self.gt)
            for k, (x, y) in enumerate(points[:, 0].round().astype(int)):
                masks[k, max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = True
        else:
            torch.testing.assert_close(input_masks, self.previous)
            masks = input_masks[0].numpy() > 0
            for k, ((x, y), label) in enumerate(
                zip(points[:, -1].round().astype(int), labels[:, -1], strict=True)
            ):
                if label == -10:  # nothing to correct
                    continue
                error = (self.gt[k] & ~masks[k]) if label == 1 else (masks[k] & ~self.gt[k])
                assert error[y, x], f"click {(x, y)} with label {label} is not in the error it should fix"
                components, _ = ndimage.label(error)
                masks[k] ^= components == components[y, x]
        logits = torch.from_numpy(np.where(masks, 1.0, -1.0).astype(np.float32))  # (P, 32, 32)
        self.previous = logits[None]
        if multimask_output:
            stacked = torch.stack([-logits.abs(), logits, -logits.abs()], dim=1)
            return ModelOutput(
                pred_masks=stacked[None], iou_scores=torch.tensor([[0.1, 0.9, 0.2]] * len(masks))[None]
            )
        return ModelOutput(pred_masks=logits[None, :, None], iou_scores=torch.ones(1, len(masks), 1))


def test_a_perfect_corrector_never_gets_worse_with_more_clicks():
    """The protocol's clicks fall in the error they correct, the previous mask is fed back and the latest
    mask is scored: an oracle that fixes the error component under each click rises to IoU 1 and stays."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    ring = _mask((32, 32), slice(2, 14), slice(2, 14)) & ~_mask((32, 32), slice(5, 11), slice(5, 11))
    bar = _mask((32, 32), slice(18, 22), slice(3, 30))
    blob = _mask((32, 32), slice(20, 30), slice(20, 24)) | _mask((32, 32), slice(26, 30), slice(10, 30))
    masks = np.stack([ring, bar, blob])
    protocol = EvaluationProtocol(prompts=("clicks",), max_clicks=15)
    processor = SamHFProcessor(image_size=32, mask_size=32)
    result = evaluate_model(OracleModel(masks), processor, [(image, masks)], protocol, progress=False)
    curve = result["clicks"]["miou_per_click"]
    assert curve[0] < 1.0
    assert (np.diff(curve) >= 0).all()
    assert curve[-1] == 1.0 and result["clicks"]["nof@90"] == 0


@pytest.mark.slow
def test_shipped_tiny_does_not_get_worse_with_more_clicks_on_cells():
    """SAM's interactive setting holds or improves as correction clicks are added; the shipped model learned long
    click sequences in its second training stage (`training/configs/pretrain_tiny_clicks_cpu.yaml`)."""
    from sam_hf import SamHFModel
    from sam_hf.data.synthetic import synthetic_samples

    model = SamHFModel.from_pretrained("sam-hf-tiny").eval()
    processor = SamHFProcessor.from_pretrained("sam-hf-tiny")
    samples = [(s.image, s.masks.astype(bool)) for s in synthetic_samples(3, "test", "cells", 128)]
    protocol = EvaluationProtocol(prompts=("clicks",), max_clicks=10)
    curve = evaluate_model(model, processor, samples, protocol, progress=False)["clicks"]["miou_per_click"]
    assert (np.diff(curve) >= -0.01).all(), f"mIoU per click {np.round(curve, 3).tolist()}"


def _shapes_dataset(num_images: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(num_images):
        image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
        masks = np.stack(
            [
                _mask((90, 120), slice(10, 40), slice(10, 50)),
                _mask((90, 120), slice(50, 80), slice(60, 110)),
                np.zeros((90, 120), dtype=bool),  # empty: skipped, cannot be prompted
            ]
        )
        samples.append((image, masks))
    return samples


def test_protocol_on_tiny_model_is_seeded(tiny_model, tiny_config):
    processor = SamHFProcessor.from_model_config(tiny_config)
    protocol = EvaluationProtocol(max_clicks=4)
    first = evaluate_model(tiny_model, processor, _shapes_dataset(), protocol, progress=False)
    again = evaluate_model(tiny_model, processor, _shapes_dataset(), protocol, progress=False)
    assert first == again
    assert sorted(first) == sorted(PROMPT_TYPES)
    assert all(first[p]["num_objects"] == 4 for p in PROMPT_TYPES)
    assert len(first["clicks"]["miou_per_click"]) == 4
    assert all(0.0 <= first[p]["mean_iou"] <= first[p]["mean_dice"] <= 1.0 for p in PROMPT_TYPES)


def test_chunked_upsampling_changes_nothing(tiny_model, tiny_config, monkeypatch):
    import sam_hf.evaluation.protocol

    processor = SamHFProcessor.from_model_config(tiny_config)
    protocol = EvaluationProtocol(prompts=("box", "clicks"), max_clicks=2)
    whole = evaluate_model(tiny_model, processor, _shapes_dataset(1), protocol, progress=False)
    monkeypatch.setattr(sam_hf.evaluation.protocol, "_UPSAMPLE_CHUNK", 1)
    assert evaluate_model(tiny_model, processor, _shapes_dataset(1), protocol, progress=False) == whole


def test_peft_wrapped_model_evaluates_like_its_base(tiny_model, tiny_config):
    from peft import LoraConfig, get_peft_model

    processor = SamHFProcessor.from_model_config(tiny_config)
    protocol = EvaluationProtocol(prompts=("point", "box", "clicks"), max_clicks=3)
    base = evaluate_model(tiny_model, processor, _shapes_dataset(1), protocol, progress=False)
    # LoRA starts as the identity (B = 0): same numbers through the PEFT wrapper
    peft_model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    wrapped = evaluate_model(peft_model, processor, _shapes_dataset(1), protocol, progress=False)
    assert wrapped == base  # adding exact zeros changes no bit


def test_an_hq_model_is_measured_on_its_own_image_features(tiny_config):
    """SAM-HQ's decoder needs the encoder's early feature too: the protocol passes every feature the model
    names, and scores its one mask per prompt as the model gives it."""
    from sam_hf import SamHFConfig, SamHFModel

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    processor = SamHFProcessor.from_model_config(model.config)
    protocol = EvaluationProtocol(prompts=("point", "box", "clicks"), max_clicks=2)
    calls = []
    original = model.forward
    model.forward = lambda **kwargs: calls.append(sorted(kwargs)) or original(**kwargs)
    result = evaluate_model(model, processor, _shapes_dataset(1), protocol, progress=False)
    assert calls and all({"image_embeddings", "intermediate_embeddings"} <= set(names) for names in calls)
    assert all(
        result[p]["num_objects"] == 2 and 0.0 <= result[p]["mean_iou"] <= 1.0 for p in protocol.prompts
    )
    image, masks = _shapes_dataset(1)[0]
    pixel_values, original_sizes, reshaped_sizes = processor.preprocess_images([image])
    box = processor.transform_boxes(torch.tensor([[10.0, 10.0, 49.0, 39.0]]), image.shape[:2])
    with torch.inference_mode():
        output = original(
            **model.get_image_features(pixel_values), input_boxes=box[None], multimask_output=False
        )
    predicted = processor.post_process_masks(output.pred_masks, original_sizes, reshaped_sizes)[0][0, 0]
    expected_iou = (predicted.numpy() & masks[0]).sum() / (predicted.numpy() | masks[0]).sum()
    single = evaluate_model(model, processor, [(image, masks[:1])], EvaluationProtocol(prompts=("box",)))
    assert single["box"]["mean_iou"] == pytest.approx(expected_iou, abs=1e-6)


def test_timed_run_is_written_with_its_protocol_and_reported(tiny_model, tiny_config, tmp_path):
    import json

    processor = SamHFProcessor.from_model_config(tiny_config)
    protocol = EvaluationProtocol(prompts=("box",))
    run = timed_run("my-model", tiny_model, processor, _shapes_dataset(1), protocol, num_samples=1)
    assert run["model"] == "my-model" and run["eval_runtime_s"] >= 0
    assert run["results"] == evaluate_model(
        tiny_model, processor, _shapes_dataset(1), protocol, progress=False
    )
    path = tmp_path / "out" / "eval_results.json"
    report = write_eval_results(path, protocol, "shapes", "test", 1, {"model": run})
    saved = json.loads(path.read_text())
    assert saved["protocol"] == protocol.to_dict() and saved["runs"]["model"] == run
    assert (saved["dataset"], saved["split"], saved["num_images"]) == ("shapes", "test", 1)
    lines = report.splitlines()
    assert lines[0] == f"{protocol.name} on shapes [test], 1 images"
    assert lines[1].split() == ["prompt", "metric", "model"] and set(lines[2]) == {"-", " "}
    assert f"{run['results']['box']['mean_iou']:.4f}" in lines[3]


def test_results_table_marks_unmeasured():
    runs = {
        "base": {"results": {"box": {"mean_iou": 0.5, "mean_dice": 0.6, "num_objects": 3}}},
        "finetuned": {"results": {}},
    }
    header, rows = results_table(runs)
    assert header == ["prompt", "metric", "base", "finetuned"]
    assert rows == [
        ["box (3 objects)", "mIoU", "0.5000", "not measured"],
        ["box (3 objects)", "Dice", "0.6000", "not measured"],
    ]
    curve = {"miou_per_click": [0.1 * k for k in range(1, 8)], "noc@90": 6.0, "nof@90": 2}
    assert list(flat_metrics(curve)) == ["miou@1", "miou@3", "miou@5", "miou@7", "noc@90"]
    assert flat_metrics({"mean_iou": 0.5, "mean_dice": 0.6, "num_objects": 1}) == {
        "mean_iou": 0.5,
        "mean_dice": 0.6,
    }


def test_evaluate_model_needs_an_object(tiny_model, tiny_config):
    image, masks = np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="at least one non-empty ground-truth mask"):
        evaluate_model(tiny_model, SamHFProcessor.from_model_config(tiny_config), [(image, masks)])


def test_mask_iou_follows_the_metric_convention():
    from sam_hf.evaluation import mask_iou

    empty = np.zeros((4, 4), bool)
    left, right = empty.copy(), empty.copy()
    left[0, :2], right[0, 1:3] = True, True
    assert mask_iou(left, right) == pytest.approx(1 / 3)
    assert mask_iou(left, empty) == 0.0
    assert mask_iou(empty, empty) == 1.0  # an empty prediction of an empty reference is perfect
