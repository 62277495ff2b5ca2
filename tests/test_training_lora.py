"""Tests for sam_hf.training.lora: what trains, adapter round trip, merge; Trainer on our collator."""

import datasets
import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from sam_hf import SamHFModel
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.collator import SamTrainingCollator, add_example_index, epoch_callback
from sam_hf.training.lora import apply_lora, freeze_for_decoder_training


def _shapes_dataset(num_rows=8, size=64, image_features=False):
    """Rows of a bright rectangle on a dark ground, as numpy arrays (or `datasets.Image` columns, as a saved
    dataset reads them)."""
    images, labels = [], []
    rng = np.random.default_rng(0)
    for _ in range(num_rows):
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size // 2, 2)
        label[y : y + 20, x : x + 24] = 1
        image = np.full((size, size, 3), 40, np.uint8)
        image[label == 1] = 220
        images.append(image)
        labels.append(label)
    if image_features:
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
        return add_example_index(
            datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        )
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}).with_format("numpy")
    return add_example_index(dataset)


def _inputs(config):
    torch.manual_seed(0)
    size = config.vision_config.image_size
    return {
        "pixel_values": torch.randn(1, 3, size, size),
        "input_points": torch.tensor([[[[30.0, 40.0]]]]),
        "input_labels": torch.tensor([[[1]]]),
    }


def test_lora_targets_only_decoder_projections(tiny_model):
    model = apply_lora(tiny_model, modules_to_save=["iou_prediction_head"], verbose=False)
    targeted = model.targeted_module_names
    assert targeted and all(name.startswith("mask_decoder.") for name in targeted)
    assert {name.rsplit(".", 1)[-1] for name in targeted} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in name or "iou_prediction_head" in name for name in trainable)
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(SamHFModel(tiny_model.config), target_modules=r"image_encoder\..*qkv", verbose=False)


def test_full_decoder_mode_freezes_encoders(tiny_model):
    freeze_for_decoder_training(tiny_model)
    for name, parameter in tiny_model.named_parameters():
        assert parameter.requires_grad == name.startswith("mask_decoder.")


def test_adapter_round_trip_and_merge(tiny_model, tmp_path):
    from peft import PeftModel

    inputs = _inputs(tiny_model.config)
    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.save_pretrained(tmp_path / "base")
    model = apply_lora(
        tiny_model, modules_to_save=["iou_prediction_head"], init_lora_weights=False, verbose=False
    )
    with torch.no_grad():  # make the saved head differ from the base so the test sees its restoration
        for parameter in model.base_model.model.mask_decoder.iou_prediction_head.parameters():
            parameter.add_(0.05)
    model.eval()
    expected = model(**inputs)
    base_output = SamHFModel.from_pretrained(tmp_path / "base").eval()(**inputs)
    assert not torch.allclose(expected.pred_masks, base_output.pred_masks, atol=1e-4)
    model.save_pretrained(tmp_path / "adapter")

    loaded = PeftModel.from_pretrained(
        SamHFModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    actual = loaded(**inputs)
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(actual.iou_scores, expected.iou_scores, rtol=0, atol=1e-6)

    merged = loaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = SamHFModel.from_pretrained(tmp_path / "merged").eval()
    merged_output = reloaded(**inputs)
    torch.testing.assert_close(merged_output.pred_masks, expected.pred_masks, rtol=0, atol=1e-5)  # fp32 merge
    torch.testing.assert_close(merged_output.iou_scores, expected.iou_scores, rtol=0, atol=1e-5)
    encoder_keys = [k for k in base_state if k.startswith("image_encoder.")]
    for key in encoder_keys:
        assert torch.equal(reloaded.state_dict()[key], base_state[key])


def test_trainer_reduces_loss_and_changes_only_lora(tiny_model, tmp_path):
    config = tiny_model.config
    processor = SamHFProcessor.from_model_config(config)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = apply_lora(tiny_model, r=4, verbose=False)
    collator = SamTrainingCollator(processor, prompt_types=("box",), max_prompts=2, box_jitter=0.0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=12,
        learning_rate=5e-2,
        logging_steps=1,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_shapes_dataset(),
        data_collator=collator,
        callbacks=[epoch_callback(collator)],
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert collator.epoch == 5  # 8 rows / batch 4 = 2 steps per epoch, epochs 0..5
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    changed = {
        name
        for name, parameter in model.named_parameters()
        if "lora_" not in name
        and not torch.equal(
            parameter, before[name.replace("base_model.model.", "").replace(".base_layer", "")]
        )
    }
    assert changed == set()
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if "lora_B" in n)


def test_readme_trainer_section_runs_as_written(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Fine-tune with `transformers.Trainer`", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer, loaded = namespace["trainer"], namespace["model"]
    assert trainer.state.global_step == 2
    assert [entry for entry in trainer.state.log_history if "train_loss" in entry]
    saved = tmp_path / "sam-trainer" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in saved.iterdir()
    }
    trained = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    reloaded = loaded.state_dict()
    assert trained and any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # training moved B
    for key, value in trained.items():
        assert torch.equal(reloaded[key], value), key


def _tiny_hq_model():
    from sam_hf import SamHFConfig

    torch.manual_seed(0)
    return SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()


def test_an_hq_decoder_trains_its_hq_modules_in_full_beside_the_adapters(tiny_model, tmp_path):
    """SAM-HQ's recipe trains its HQ token, MLP and feature fusion: the decoder class names them, LoRA keeps
    its targets and adds them as `modules_to_save`; SAM's decoder adds none. The adapter round trip restores
    the trained HQ modules."""
    from peft import PeftModel

    from sam_hf.modeling.mask_decoder import MaskDecoder, MaskDecoderHQ

    assert MaskDecoder.trained_in_full == ()
    assert apply_lora(tiny_model, verbose=False).peft_config["default"].modules_to_save is None
    hq_modules = {"hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature"}
    assert set(MaskDecoderHQ.trained_in_full) == hq_modules
    base = _tiny_hq_model()
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(
        base, r=4, modules_to_save=["iou_prediction_head"], init_lora_weights=False, verbose=False
    )
    targeted = model.targeted_module_names
    assert targeted and {name.rsplit(".", 1)[-1] for name in targeted} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
    }
    trained = {
        name.split(".modules_to_save.")[0].rsplit("mask_decoder.", 1)[1]
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and "lora_" not in name
    }
    assert trained == hq_modules | {"iou_prediction_head"}
    with torch.no_grad():  # the trained copies differ from the base, so the test sees their restoration
        for name, parameter in model.named_parameters():
            if ".modules_to_save." in name:
                parameter.add_(0.05)
    model.eval()
    inputs = _inputs(base.config)
    features = base.get_image_features(inputs.pop("pixel_values"))
    expected = model(**features, **inputs)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(SamHFModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    actual = loaded.eval()(**features, **inputs)
    assert not torch.allclose(SamHFModel.from_pretrained(tmp_path / "base")(**features, **inputs).pred_masks,
                              expected.pred_masks, atol=1e-4)  # fmt: skip
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(actual.iou_scores, expected.iou_scores, rtol=0, atol=1e-6)
    merged = loaded.merge_and_unload()(**features, **inputs)
    torch.testing.assert_close(merged.pred_masks, expected.pred_masks, rtol=0, atol=1e-5)  # fp32 merge


def test_trainer_trains_an_hq_model_on_cached_features(tmp_path):
    """`transformers.Trainer` on SAM-HQ with its two image features cached: the loss comes from `forward`,
    the adapters and the HQ modules change, nothing else."""
    from sam_hf.training.embeddings import cache_image_embeddings

    base = _tiny_hq_model()
    processor = SamHFProcessor.from_model_config(base.config)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    dataset = cache_image_embeddings(
        _shapes_dataset(image_features=True), base, processor, str(tmp_path / "c")
    )
    model = apply_lora(base, r=4, verbose=False)
    collator = SamTrainingCollator(
        processor, prompt_types=("box",), max_prompts=2, use_cached_embeddings=True,
        image_feature_names=base.image_feature_names,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4, learning_rate=5e-2,
        logging_steps=1, remove_unused_columns=False, label_names=["labels"], report_to=[], use_cpu=True,
        save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses))
    changed = {
        name.split(".modules_to_save.")[0].split(".original_module.")[0].replace("base_model.model.", "")
        for name, parameter in model.named_parameters()
        if "lora_" not in name
        and not torch.equal(
            parameter,
            before[
                name.replace("base_model.model.", "")
                .replace(".base_layer", "")
                .replace(".modules_to_save.default", "")
                .replace(".original_module", "")
            ],
        )
    }
    assert {name.split(".")[1] for name in changed} <= set(type(base.mask_decoder).trained_in_full)
    assert "mask_decoder.hf_token" in changed
