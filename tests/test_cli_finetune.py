"""Tests for `sam-hf finetune` (sam_hf.cli.finetune)."""

import argparse
import os

import datasets
import numpy as np
import pytest

from sam_hf.cli import main
from sam_hf.cli.finetune import parse_prompt_types


def test_finetune_command_writes_adapter_and_merged(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 8:30] = 3
    image = np.where(label[..., None] > 0, 210, 20).astype(np.uint8).repeat(3, axis=-1)
    features = datasets.Features({"img": datasets.Image(), "seg": datasets.Image()})
    datasets.Dataset.from_dict({"img": [image] * 4, "seg": [label] * 4}, features=features).save_to_disk(
        str(tmp_path / "data")
    )
    code = main(
        ["finetune", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "data"),
         "--image-column", "img", "--mask-column", "seg", "--prompt", "box,point", "--lora-r", "4",
         "--max-steps", "2", "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert os.path.exists(tmp_path / "out" / "adapter_model.safetensors")
    assert os.path.exists(tmp_path / "out" / "merged" / "model.safetensors")
    assert os.path.exists(tmp_path / "out" / "preprocessor_config.json")


def test_prompt_types_are_validated():
    assert parse_prompt_types("box, point") == ["box", "point"]
    with pytest.raises(argparse.ArgumentTypeError, match="--prompt"):
        parse_prompt_types("scribble")
