"""The shipped sam-hf-tiny: resolvable by name, loads strictly, its masks follow the prompted object; the
pretraining (`sam_hf.training.pretrain`) runs (and resumes) end to end on a CPU with the tiny test preset."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_hf import SamHFModel
from sam_hf.cli import main as sam_hf_cli
from sam_hf.data.synthetic import generate_sample
from sam_hf.modeling.configuration_sam_hf import SAM_HF_PRESETS
from sam_hf.pretrained import SHIPPED_MODELS, shipped_model_path
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.remote_code import remote_code_files
from sam_hf.training import pretrain

_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    path = shipped_model_path("sam-hf-tiny")
    return SamHFModel.from_pretrained(path).eval(), SamHFProcessor.from_pretrained(path)


def test_names_resolve_to_package_folders():
    assert SHIPPED_MODELS == ("sam-hf-tiny",)
    path = shipped_model_path("sam-hf-tiny")
    assert shipped_model_path("sam_hf/sam-hf-tiny") == path
    assert {p.name for p in path.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
    }
    assert shipped_model_path("facebook/sam-vit-base") is None


def test_from_pretrained_takes_the_shipped_name(shipped, tmp_path, monkeypatch):
    model, processor = shipped
    monkeypatch.chdir(tmp_path)
    by_name = SamHFModel.from_pretrained("sam-hf-tiny")
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_name.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert SamHFProcessor.from_pretrained("sam-hf-tiny").to_dict() == processor.to_dict()


def test_a_bfloat16_model_predicts_numpy_float32():
    """`from_pretrained(..., dtype=torch.bfloat16)` then `SamPredictor.predict`: numpy has no bfloat16."""
    from sam_hf import SamPredictor

    model = SamHFModel.from_pretrained("sam-hf-tiny", dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16 and model.name_or_path == "sam-hf-tiny"
    predictor = SamPredictor(model)
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:100] = 200
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(np.array([[60.0, 45.0]]), np.array([1]))
    assert masks.shape == (3, 96, 128) and masks.dtype == bool
    assert scores.dtype == logits.dtype == np.float32 and logits.shape == (3, 64, 64)


def test_a_local_folder_named_like_a_shipped_model_wins(shipped, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained("sam-hf-tiny")
    loaded = SamHFModel.from_pretrained("sam-hf-tiny")
    assert loaded.config.mask_size == tiny_model.config.mask_size != shipped[0].config.mask_size
    loaded_weights = loaded.state_dict()
    for key, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded_weights[key], tensor), key


def test_config_is_the_preset(shipped):
    model, processor = shipped
    vision, prompt, decoder = SAM_HF_PRESETS["sam_hf_tiny"]
    config = model.config
    for section, expected in zip(
        (config.vision_config, config.prompt_encoder_config, config.mask_decoder_config),
        (vision, prompt, decoder),
        strict=True,
    ):
        assert {key: getattr(section, key) for key in expected} == expected
    assert (processor.image_size, processor.mask_size) == (128, 64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_box_masks_follow_the_object(shipped):
    """A box on each object of at least 1000 px of held-out images (18 objects) gives a mask that matches it.

    Measured for this model: mean IoU 0.73; 17 of 18 masks overlap their own object most.
    """
    model, processor = shipped
    ious, own_best = [], []
    for index in range(8):
        sample = generate_sample(index, "test", "shapes", image_size=192)
        targets = sample.masks[sample.masks.reshape(len(sample.masks), -1).sum(1) >= 1000]
        if not len(targets):
            continue
        boxes = []
        for mask in targets:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inputs = processor(sample.image, input_boxes=[boxes], return_tensors="pt")
        with torch.inference_mode():
            out = model(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
            )
        masks = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][:, 0].numpy()
        assert masks.shape == (len(targets), 192, 192)
        for k, mask in enumerate(masks):
            overlaps = [_iou(mask, target) for target in targets]
            ious.append(overlaps[k])
            own_best.append(int(np.argmax(overlaps)) == k)
    assert len(ious) == 18
    assert np.mean(ious) > 0.65
    assert sum(own_best) >= 16


def _tiny_recipe(**overrides):
    """The GPU recipe with the tiny test preset and `overrides`."""
    base = {"preset": "tiny", "image_size": None, "warmup_steps": 1, "batch_size": 2, "prompts_per_image": 2}
    return pretrain.load_recipe(_ROOT / "training" / "configs" / "pretrain_tiny.yaml", {**base, **overrides})


def test_pretraining_runs_and_resumes_on_cpu(tmp_path):
    """Two steps of the recipe with the tiny test preset, stopped after one and resumed."""
    recipe = _tiny_recipe(steps=2, checkpoint_every=1)
    assert pretrain.pretrain(recipe, tmp_path, "cpu", max_steps=1) is None
    assert (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "model").exists()
    assert pretrain.pretrain(recipe, tmp_path, "cpu") == tmp_path / "model"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 1]
    assert all(np.isfinite(entry["loss"]) for entry in log)
    model = SamHFModel.from_pretrained(tmp_path / "model")
    assert model.config.mask_size == 32
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["recipe"]["steps"] == 2 and recipe["device"]


def test_pretraining_feeds_an_hq_decoder_every_image_feature(tmp_path):
    """SAM-HQ's decoder takes the encoder's early feature beside the embedding (and refuses a call without
    it): pretraining passes both, to the first pass and to the correction passes."""
    recipe = _tiny_recipe(preset="tiny_hq", steps=1, correction_every=1)
    assert pretrain.pretrain(recipe, tmp_path, "cpu") == tmp_path / "model"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["loss"])
    model = SamHFModel.from_pretrained(tmp_path / "model")
    assert model.config.mask_decoder_config.decoder_type == "hq"


def test_script_is_the_command_line_of_the_library(tmp_path, monkeypatch):
    """`training/pretrain_tiny.py` parses `--config/--out/--set/--max-steps` into one `pretrain` call."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import pretrain_tiny

    calls = []
    monkeypatch.setattr(pretrain_tiny, "pretrain", lambda *args: calls.append(args))
    config = _ROOT / "training" / "configs" / "pretrain_tiny_cpu.yaml"
    pretrain_tiny.main(
        ["--config", str(config), "--out", str(tmp_path), "--device", "cpu", "--max-steps", "3"]
        + ["--num-workers", "0", "--set", "steps=7", "image_size=null"]
    )
    expected = pretrain.load_recipe(config, {"steps": 7, "image_size": None})
    assert calls == [(expected, str(tmp_path), "cpu", 0, 3)]
    sys.modules.pop("pretrain_tiny", None)


def test_cpu_recipe_sets_the_input_size_and_trains_under_bf16_autocast(tmp_path, monkeypatch):
    """The CPU recipe's own keys: `image_size` overrides the preset's input side, `autocast: bf16` trains,
    `correction_every` spaces the correction passes."""
    config = _ROOT / "training" / "configs" / "pretrain_tiny_cpu.yaml"
    autocast_seen = []
    training_loss = pretrain._training_loss

    labels_side = []
    flash_enabled = []

    def recording_loss(model, batch, *args, **kwargs):
        autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        flash_enabled.append(torch.backends.cuda.flash_sdp_enabled())
        labels_side.append(batch["labels"].shape[-1])
        return training_loss(model, batch, *args, **kwargs)

    correction_steps = []
    correction_clicks = pretrain._correction_clicks

    def recording_clicks(logits, masks, indices, seed, step, iteration):
        correction_steps.append(step)
        return correction_clicks(logits, masks, indices, seed, step, iteration)

    monkeypatch.setattr(pretrain, "_training_loss", recording_loss)
    monkeypatch.setattr(pretrain, "_correction_clicks", recording_clicks)
    overrides = {
        "preset": "tiny",
        "image_size": 96,
        "steps": 3,
        "correction_every": 2,
        "batch_size": 2,
        "prompts_per_image": 2,
        "warmup_steps": 1,
    }
    pretrain.pretrain(pretrain.load_recipe(config, overrides), tmp_path, "cpu")
    assert autocast_seen == [(True, torch.bfloat16)] * 3
    assert flash_enabled == [False] * 3  # the math SDPA kernel on CPU
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the loop
    assert labels_side == [96] * 3  # loss_at_image_size: labels at the input side, not the mask side (24)
    assert correction_steps == [0, 2]  # correction_every=2: a correction pass on every other step
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[0]["loss"])
    model = SamHFModel.from_pretrained(tmp_path / "model")
    vision = model.config.vision_config
    assert vision.image_size == 96 and model.config.mask_size == 4 * 96 // vision.patch_size
    recipe = json.loads((tmp_path / "recipe.json").read_text())["recipe"]
    assert recipe["autocast"] == "bf16" and recipe["image_size"] == 96
    with pytest.raises(ValueError, match="autocast must be null or 'bf16', got 'fp16'"):
        pretrain.load_recipe(config, {"autocast": "fp16"})
    with pytest.raises(ValueError, match="recipe override keys must be among .*, got 'stepz'"):
        pretrain.load_recipe(config, {"stepz": 1})


def test_training_loss_scores_upsampled_logits_against_full_size_labels():
    """`_loss` at the input size equals `sam_loss` of the bilinear upsampling the processor applies at inference."""
    from sam_hf.modeling.loss import sam_loss
    from sam_hf.modeling.modeling_sam_hf import SamHFOutput

    torch.manual_seed(0)
    output = SamHFOutput(pred_masks=torch.randn(2, 3, 1, 8, 8), iou_scores=torch.rand(2, 3, 1))
    labels = (torch.rand(2, 3, 16, 16) > 0.5).float()
    weights = {"focal_weight": 20.0, "dice_weight": 1.0}
    upsampled = torch.nn.functional.interpolate(
        output.pred_masks[:, :, 0], (16, 16), mode="bilinear", align_corners=False
    )[:, :, None]
    expected = sam_loss(upsampled, output.iou_scores, labels)
    processor = SamHFProcessor(image_size=16, mask_size=8)
    assert pretrain._loss(output, labels, weights, processor).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    small = (torch.rand(2, 3, 8, 8) > 0.5).float()
    assert pretrain._loss(output, small, {"focal_weight": 1.0, "dice_weight": 2.0}, processor).item() == (
        pytest.approx(sam_loss(output.pred_masks, output.iou_scores, small, 1.0, 2.0).item(), rel=1e-6)
    )


def test_shipped_card_is_the_template_rendered_from_the_run_record(monkeypatch):
    """Every number in the shipped card comes from `training/runs/` (re-render: `ship_tiny.py --card-only`)."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import ship_tiny
    from huggingface_hub import ModelCard

    from sam_hf.hub import CARD_MARKER

    shipped = shipped_model_path("sam-hf-tiny")
    card = ship_tiny.render_card(shipped, ship_tiny.RECORDS)
    assert card == (shipped / "README.md").read_text()
    evaluation = json.loads((ship_tiny.RECORDS / f"{ship_tiny.STAGES[-1]}_eval.json").read_text())
    held_out = evaluation["shapes128"]
    row = " | ".join(f"{held_out[prompt]['mean_iou']:.3f}" for prompt in ship_tiny.PROMPTS)
    assert f"| {held_out['box']['num_objects']} | {row} |" in card
    cells = evaluation["clicks"]["cells128"]
    curve = " | ".join(f"{cells['miou_per_click'][k - 1]:.3f}" for k in ship_tiny.CLICK_COLUMNS)
    assert f"| {cells['num_objects']} | {curve} | {cells['noc@85']:.2f} | {cells['noc@90']:.2f} |" in card
    for index, name in enumerate(ship_tiny.STAGES, 1):
        recipe = json.loads((ship_tiny.RECORDS / f"{name}_recipe.json").read_text())
        assert f"**Stage {index}** (`training/configs/{name}.yaml`)" in card
        assert f"{recipe['recipe']['steps']} steps" in card and f"{recipe['train_time_s']:.0f} s" in card
    loaded = ModelCard(card)
    assert loaded.data.library_name == "sam_hf" and CARD_MARKER in loaded.text
    assert "Variables:" not in card and "{{" not in card
    sys.modules.pop("ship_tiny", None)


def test_ship_tiny_ships_a_run_with_its_evaluation_and_card(tmp_path, monkeypatch):
    """A one-step run of the tiny preset through `ship_tiny.py --run`: weights, processor config and source land
    in the model folder, the record and the `sam-hf evaluate` results in the records folder, the card says them."""
    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import ship_tiny

    run, model_dir, records = tmp_path / "run", tmp_path / "sam-hf-tiny", tmp_path / "runs"
    pretrain.pretrain(_tiny_recipe(steps=1), run, "cpu")
    with pytest.raises(ValueError, match="--run must be a finished pretrain_tiny.py run"):
        ship_tiny.main(["--run", str(tmp_path), "--model-dir", str(model_dir)])
    args = ["--model-dir", str(model_dir), "--records", str(records), "--stages", "tiny_run"]
    ship_tiny.main(["--run", str(run), *args, "--num-images", "2", "--num-click-images", "2"])
    source = {path.name for path in remote_code_files(model_dir)}  # for trust_remote_code without sam_hf
    assert {"modeling_sam_hf.py", "processing_sam_hf.py", "mask_generation.py"} <= source
    assert {path.name for path in model_dir.iterdir()} == source | {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_sam_hf.SamHFModel"
    assert (
        config["custom_pipelines"]["mask-generation"]["impl"] == "mask_generation.SamHFMaskGenerationPipeline"
    )
    model = SamHFModel.from_pretrained(model_dir)
    assert model.config.mask_size == 32
    assert SamHFProcessor.from_pretrained(model_dir).image_size == model.config.vision_config.image_size
    evaluation = json.loads((records / "tiny_run_eval.json").read_text())
    clicks = evaluation.pop("clicks")
    weights = (model_dir / "model.safetensors").read_bytes()
    assert evaluation.pop("weights_sha256") == hashlib.sha256(weights).hexdigest()
    assert sorted(evaluation) == ["cells128", "cells192", "shapes128", "shapes192"]
    assert all(
        entry["num_images"] == 2 and set(ship_tiny.PROMPTS) <= set(entry) for entry in evaluation.values()
    )
    assert sorted(clicks) == ["cells128", "shapes128"]
    assert all(len(entry["miou_per_click"]) == ship_tiny.MAX_CLICKS for entry in clicks.values())
    assert (records / "tiny_run_train_log.jsonl").read_text() == (run / "train_log.jsonl").read_text()
    card = (model_dir / "README.md").read_text()
    assert f"| {evaluation['cells192']['box']['num_objects']} | " in card and "1 steps" in card
    (model_dir / "README.md").unlink()
    ship_tiny.main(["--card-only", *args])
    assert (model_dir / "README.md").read_text() == card
    # A rerun on the same weights keeps what was measured (an interrupted evaluation resumes, set by set).
    measured = json.loads((records / "tiny_run_eval.json").read_text())
    monkeypatch.setattr(ship_tiny, "sam_hf_cli", lambda argv: pytest.fail(f"measured again: {argv}"))
    assert ship_tiny.evaluate(model_dir, records, "tiny_run", 2, 2) == measured
    # Two sets lost: only those are measured again, and the file written between them keeps every other set.
    eval_file = records / "tiny_run_eval.json"
    eval_file.write_text(
        json.dumps({k: v for k, v in measured.items() if k not in ("shapes192", "cells128")})
    )
    on_disk_at_each_call = []

    def cli(argv):
        on_disk_at_each_call.append(json.loads(eval_file.read_text()))
        sam_hf_cli(argv)

    monkeypatch.setattr(ship_tiny, "sam_hf_cli", cli)
    remeasured = ship_tiny.evaluate(model_dir, records, "tiny_run", 2, 2)
    assert len(on_disk_at_each_call) == 2
    assert on_disk_at_each_call[1]["clicks"] == measured["clicks"] and "shapes192" in on_disk_at_each_call[1]
    assert remeasured["clicks"] == measured["clicks"] and sorted(remeasured) == sorted(measured)
    sys.modules.pop("ship_tiny", None)


def test_click_stage_continues_from_a_model_with_a_frozen_encoder_and_long_click_chains(
    tmp_path, monkeypatch
):
    """The second stage's keys: `init_from` starts from a saved model, `freeze_image_encoder` keeps its
    encoder, and each step runs 0 to `max_untrained_correction_iterations` forward-only correction passes
    before the trained ones, so prompts grow past the first stage's 4 points."""
    first = pretrain.pretrain(_tiny_recipe(steps=1), tmp_path / "stage1", "cpu")
    config = _ROOT / "training" / "configs" / "pretrain_tiny_clicks_cpu.yaml"
    overrides = {
        "preset": "tiny",
        "image_size": None,
        "init_from": str(first),
        "steps": 2,
        "batch_size": 2,
        "prompts_per_image": 2,
        "warmup_steps": 1,
        "max_untrained_correction_iterations": 4,
    }
    recipe = pretrain.load_recipe(config, overrides)
    points_seen = []
    model_forward = SamHFModel.forward

    def recording_forward(self, *args, **kwargs):
        if kwargs.get("input_points") is not None:
            points_seen.append((kwargs["input_points"].shape[-2], torch.is_grad_enabled()))
        return model_forward(self, *args, **kwargs)

    monkeypatch.setattr(SamHFModel, "forward", recording_forward)
    second = pretrain.pretrain(recipe, tmp_path / "stage2", "cpu")
    before, after = SamHFModel.from_pretrained(first), SamHFModel.from_pretrained(second)
    trained = dict(after.named_parameters())
    changed = {name for name, weight in before.named_parameters() if not torch.equal(weight, trained[name])}
    assert changed and not any(name.startswith("image_encoder.") for name in changed)
    assert any(name.startswith("mask_decoder.") for name in changed)
    # Per step: the two first-pass halves, then `untrained` no-grad passes, then 2 trained passes.
    untrained = [points for points, grad in points_seen if not grad]
    assert untrained and max(points for points, _ in points_seen) > 4
    assert sum(grad for _, grad in points_seen) == 2 * (2 + recipe["correction_iterations"])
    with pytest.raises(ValueError, match="image_size 96 differs from init_from's 128"):
        pretrain.pretrain({**recipe, "image_size": 96}, tmp_path / "stage3", "cpu")
    with pytest.raises(ValueError, match="freeze_image_encoder needs init_from"):
        pretrain.pretrain({**recipe, "init_from": None}, tmp_path / "stage3", "cpu")


def test_shipped_source_is_the_package_source(tmp_path, monkeypatch):
    """The copies beside the shipped weights (remote code for `trust_remote_code=True` without sam_hf) are what
    `ship_tiny.py --source-only` writes from today's package: a change to a copied module fails here until the
    copies are refreshed."""
    import shutil

    monkeypatch.syspath_prepend(str(_ROOT / "training"))
    import ship_tiny

    shipped = shipped_model_path("sam-hf-tiny")
    fresh = tmp_path / "sam-hf-tiny"
    shutil.copytree(shipped, fresh)
    ship_tiny.ship_source(fresh)
    for name in sorted({p.name for p in shipped.iterdir()} | {p.name for p in fresh.iterdir()}):
        assert (fresh / name).read_bytes() == (shipped / name).read_bytes(), (
            f"{name} differs from the package source: run python training/ship_tiny.py --source-only"
        )
    sys.modules.pop("ship_tiny", None)
