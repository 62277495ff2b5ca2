"""`sam-hf evaluate` on a tiny model and a synthetic `datasets` dataset saved to disk, then the card built from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf import SamHFModel
from sam_hf.cli import main
from sam_hf.hub import build_model_card


@pytest.fixture
def shapes_dataset(tmp_path) -> str:
    """Two 96x128 images with two rectangles each, as a DatasetDict with a test split."""
    import datasets

    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(2):
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        first, second = np.zeros((96, 128), np.uint8), np.zeros((96, 128), np.uint8)
        first[10 + i : 40, 10:60] = 255
        second[50:90, 70 : 120 - i] = 255
        images.append(Image.fromarray(image))
        masks.append([Image.fromarray(first), Image.fromarray(second)])
    features = datasets.Features({"image": datasets.Image(), "masks": datasets.Sequence(datasets.Image())})
    split = datasets.Dataset.from_dict({"image": images, "masks": masks}, features=features)
    path = tmp_path / "shapes"
    datasets.DatasetDict({"test": split}).save_to_disk(str(path))
    return str(path)


@pytest.fixture
def base_folder(tmp_path, tiny_model) -> str:
    path = tmp_path / "base"
    tiny_model.save_pretrained(path)
    return str(path)


@pytest.fixture
def adapter_folder(tmp_path, base_folder) -> str:
    """A LoRA adapter on the decoder's attention with non-zero B, so the fine-tuned model differs."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        SamHFModel.from_pretrained(base_folder), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    path = tmp_path / "adapter"
    model.save_pretrained(path)
    return str(path)


def test_evaluate_adapter_measures_base_and_finetuned(
    adapter_folder, base_folder, shapes_dataset, tmp_path, capsys
):
    args = ["evaluate", "--model", adapter_folder, "--dataset", shapes_dataset, "--split", "test"]
    assert main([*args, "--prompt", "point,box,clicks", "--max-clicks", "3"]) == 0
    out = capsys.readouterr().out
    assert "sam_hf-interactive-v1[max_clicks=3]" in out and "NoC@90" in out and "finetuned" in out
    results = json.loads((tmp_path / "adapter" / "eval_results.json").read_text())
    assert results["protocol"]["name"] == "sam_hf-interactive-v1[max_clicks=3]"
    assert results["num_images"] == 2 and results["split"] == "test"
    assert list(results["runs"]) == ["base", "finetuned"]
    assert results["runs"]["base"]["model"] == base_folder
    base, tuned = results["runs"]["base"]["results"], results["runs"]["finetuned"]["results"]
    assert sorted(base) == sorted(tuned) == ["box", "clicks", "point"]
    assert base["box"]["num_objects"] == tuned["box"]["num_objects"] == 4
    assert len(tuned["clicks"]["miou_per_click"]) == 3
    assert base["box"]["mean_iou"] != tuned["box"]["mean_iou"]  # the adapter changes the decoder

    # The base run (adapter disabled) equals evaluating the base folder itself, on the same prompts.
    plain = tmp_path / "plain.json"
    main(["evaluate", "--model", base_folder, "--dataset", shapes_dataset, "--prompt", "point,box,clicks",
          "--max-clicks", "3", "--output", str(plain)])  # fmt: skip
    plain_results = json.loads(plain.read_text())
    assert list(plain_results["runs"]) == ["model"]
    assert plain_results["runs"]["model"]["results"] == base

    # The card shows exactly the measured numbers.
    card = build_model_card(adapter_folder, repo_id="user/sam-lora")
    metadata = {(r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert metadata[("box", "mean_iou")] == round(tuned["box"]["mean_iou"], 6)
    assert metadata[("clicks", "noc@90")] == tuned["clicks"]["noc@90"]
    assert f"| {base['box']['mean_iou']:.4f} | {tuned['box']['mean_iou']:.4f} |" in card.text


def test_evaluate_plain_model_one_prompt(base_folder, shapes_dataset, tmp_path, capsys):
    output = tmp_path / "results" / "box.json"
    main(["evaluate", "--model", base_folder, "--dataset", shapes_dataset, "--prompt", "box",
          "--max-images", "1", "--output", str(output)])  # fmt: skip
    results = json.loads(output.read_text())
    assert results["num_images"] == 1
    assert list(results["runs"]["model"]["results"]) == ["box"]
    assert results["runs"]["model"]["results"]["box"]["num_objects"] == 2
    assert "box (2 objects)" in capsys.readouterr().out


def test_evaluate_shipped_model_by_name_and_offline_default(shapes_dataset, tmp_path, monkeypatch):
    """`--model sam-hf-tiny` from any directory, and no `--model` with the Hub unreachable (the shipped model):
    both used to fail with "folder must be a SamHF folder" outside a folder of that name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # what the resolver reads
    for extra in (["--model", "sam-hf-tiny"], []):
        main(["evaluate", *extra, "--dataset", shapes_dataset, "--prompt", "box", "--max-images", "1"])
        results = json.loads((tmp_path / "eval_results.json").read_text())  # the working directory
        assert results["runs"]["model"]["model"] == "sam-hf-tiny"
        assert results["runs"]["model"]["results"]["box"]["num_objects"] == 2
        (tmp_path / "eval_results.json").unlink()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "lasso"], "prompts must be a non-empty subset"),
        (["--split", "train"], r"split must be one of \['test'\]"),
    ],
)
def test_evaluate_rejects_bad_arguments(base_folder, shapes_dataset, extra, message):
    with pytest.raises(ValueError, match=message):
        main(["evaluate", "--debug", "--model", base_folder, "--dataset", shapes_dataset, *extra])


def test_evaluate_rejects_folder_without_model(tmp_path, shapes_dataset):
    with pytest.raises(ValueError, match="--model: .*has no config.json or adapter_config.json"):
        main(["evaluate", "--debug", "--model", str(tmp_path), "--dataset", shapes_dataset])


def test_evaluate_single_dataset_with_mask_column(base_folder, tmp_path):
    """A saved `Dataset` (no splits) with one object per row in a `mask` column."""
    import datasets

    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 1
    rows = {"image": [Image.fromarray(np.full((64, 64, 3), 90, np.uint8))] * 3, "mask": [mask] * 3}
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Array2D((64, 64), "uint8")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "single"))
    output = tmp_path / "single.json"
    main(["evaluate", "--model", base_folder, "--dataset", str(tmp_path / "single"), "--prompt", "point",
          "--output", str(output)])  # fmt: skip
    results = json.loads(output.read_text())
    assert results["split"] is None and results["num_images"] == 3
    assert results["runs"]["model"]["results"]["point"]["num_objects"] == 3
