"""transformers' and PEFT's Auto classes on the folders sam_hf writes: with sam_hf imported, and with
`trust_remote_code=True` in a process where sam_hf cannot be imported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoProcessor

from conftest import run_without_sam_hf
from sam_hf import SamHFModel, SamHFProcessor
from sam_hf.hub import load_model, load_processor, save_model
from sam_hf.pretrained import shipped_model_path
from sam_hf.training.lora import apply_lora

_POINTS = [[[200.0, 150.0]], [[300.0, 380.0]]]  # two one-point prompts on the photo, XY pixels
# An adapter reloaded by AutoPeftModel has a state dict equal to the trained one's, yet its logits (up to ~27 in
# size) were measured to differ by up to 1.4e-5: float32 rounding of the reloaded tensors' computation.
_PEFT_ATOL = 1e-4


def _segment(model, processor, image_path: str) -> torch.Tensor:
    inputs = processor(image_path, input_points=[_POINTS], input_labels=[[[1], [1]]])
    with torch.inference_mode():
        return model(**inputs).pred_masks


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory) -> str:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return str(path)


def test_auto_classes_give_the_sam_hf_classes_for_saved_and_shipped_folders(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "saved")
    for folder in (tmp_path / "saved", shipped_model_path("sam-hf-tiny")):
        expected = SamHFProcessor.from_model_config(SamHFModel.config_class.from_pretrained(folder))
        for auto_class in (AutoProcessor, AutoImageProcessor):
            processor = auto_class.from_pretrained(folder)
            assert type(processor) is SamHFProcessor and processor.to_dict() == expected.to_dict()
        assert type(AutoModel.from_pretrained(folder)) is SamHFModel
        config = json.loads((Path(folder) / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "configuration_sam_hf.SamHFConfig",
            "AutoModel": "modeling_sam_hf.SamHFModel",
        }


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: 16-39 s here
def test_saved_and_shipped_folders_load_with_remote_code_where_sam_hf_is_absent(
    tiny_model, tmp_path, photo_path
):
    # Copies, as a download or a `cp -r` would give: nothing points back into the package.
    folders = {"saved": tmp_path / "saved", "shipped": tmp_path / "shipped"}
    save_model(tiny_model, folders["saved"])
    shutil.copytree(shipped_model_path("sam-hf-tiny"), folders["shipped"])
    stdout = run_without_sam_hf(
        f"""
        import sys, torch
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor

        for name, folder in { ({k: str(v) for k, v in folders.items()})!r}.items():
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
            image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            assert type(image_processor) is type(processor), (type(image_processor), type(processor))
            inputs = processor({photo_path!r}, input_points=[{_POINTS!r}], input_labels=[[[1], [1]]])
            with torch.inference_mode():
                torch.save(model(**inputs).pred_masks, folder + "/pred_masks.pt")
            print(name, type(model).__module__, type(processor).__module__)
        assert not [m for m in sys.modules if m.split(".")[0] == "sam_hf"]
        """,
        tmp_path / "modules",
    )
    for line in stdout.splitlines():  # the classes came from the folders' copied source
        assert all(module.startswith("transformers_modules.") for module in line.split()[1:]), line
    for name, folder in folders.items():
        model = tiny_model if name == "saved" else SamHFModel.from_pretrained("sam-hf-tiny").eval()
        expected = _segment(model, load_processor(folder), photo_path)
        torch.testing.assert_close(
            torch.load(folder / "pred_masks.pt", weights_only=True), expected, rtol=0, atol=1e-6
        )


def test_convert_writes_the_processor_beside_every_format(tmp_path, photo_path):
    from transformers import SamImageProcessor, SamModel
    from transformers import SamProcessor as TransformersSamProcessor

    from sam_hf.cli import main

    for to, out in (("sam_hf", "ours"), ("transformers", "theirs"), ("meta", "sam.pth")):
        assert main(["convert", "sam-hf-tiny", str(tmp_path / out), "--to", to]) == 0
    shipped = load_processor("sam-hf-tiny")
    assert shipped.image_size == 128
    assert type(AutoProcessor.from_pretrained(tmp_path / "ours")) is SamHFProcessor
    # transformers' own classes read the converted folder at the model's 128-px frame, not their 1024 default.
    theirs = TransformersSamProcessor.from_pretrained(tmp_path / "theirs").image_processor
    assert (theirs.size.longest_edge, theirs.pad_size.height, theirs.pad_size.width) == (128, 128, 128)
    assert theirs.mask_size.longest_edge == 64
    np.testing.assert_allclose(np.array(theirs.image_mean) * 255, shipped.pixel_mean, atol=1e-4)
    np.testing.assert_allclose(np.array(theirs.image_std) * 255, shipped.pixel_std, atol=1e-4)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path / "theirs"), SamImageProcessor)
    pixel_values = theirs(Image.open(photo_path), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 3, 128, 128)
    assert SamModel.from_pretrained(tmp_path / "theirs").config.vision_config.image_size == 128
    # Read back by sam_hf: the same processor from all three (the Meta file's size from its tensor shapes).
    for out in ("ours", "theirs", "sam.pth"):
        assert load_processor(tmp_path / out).to_dict() == shipped.to_dict(), out


def _trained_adapter(base: str, folder: Path) -> torch.nn.Module:
    """LoRA with non-zero B on `load_model(base)`, saved by `save_model` to `folder`."""
    model, processor, _ = load_model(base, verbose=False)
    model = apply_lora(model, r=2, verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    save_model(model, folder, processor)
    return model.eval()


def test_auto_peft_model_loads_an_adapter_on_a_sam_hf_folder_without_import_allowlist(
    tiny_model, tmp_path, photo_path
):
    from peft import AutoPeftModel

    save_model(tiny_model, tmp_path / "base")
    trained = _trained_adapter(str(tmp_path / "base"), tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["auto_mapping"] == {
        "base_model_class": "AutoModel",
        "parent_library": "transformers",
    }
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "adapter")  # saved beside the adapter
    assert type(processor) is SamHFProcessor
    expected = _segment(trained, processor, photo_path)
    assert not torch.allclose(expected, _segment(tiny_model, processor, photo_path), atol=1e-3)
    torch.testing.assert_close(_segment(loaded, processor, photo_path), expected, rtol=0, atol=_PEFT_ATOL)


def test_auto_peft_model_on_a_shipped_base_needs_sam_hf_allowed(tmp_path, photo_path):
    from peft import AutoPeftModel

    trained = _trained_adapter("sam-hf-tiny", tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["auto_mapping"] == {"base_model_class": "SamHFModel", "parent_library": "sam_hf"}
    with pytest.raises(ValueError, match=r"import_allowlist=\['sam_hf'\]"):
        AutoPeftModel.from_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter", import_allowlist=["sam_hf"]).eval()
    processor = load_processor(tmp_path / "adapter")
    expected = _segment(trained, processor, photo_path)
    torch.testing.assert_close(_segment(loaded, processor, photo_path), expected, rtol=0, atol=_PEFT_ATOL)


def test_adapter_is_saved_in_the_sam_hf_format_only(tmp_path):
    adapter = apply_lora(load_model("sam-hf-tiny", verbose=False)[0], r=2, verbose=False)
    with pytest.raises(
        ValueError, match="an adapter is written in the sam_hf format only, got format='meta'"
    ):
        save_model(adapter, tmp_path / "sam.pth", format="meta")
    with pytest.raises(ValueError, match="format must be one of"):
        save_model(adapter, tmp_path / "out", format="onnx")
