"""Writing a model with its processor: the one path that `sam-hf convert`, `sam-hf finetune` (the adapter and
`merged/`), `sam-hf push` and pretraining save through, so every folder the package writes loads with the
Auto classes, with transformers' own classes (the transformers format), or with the official code (Meta).

The formats (`SAVE_FORMATS`):
    - `"sam_hf"`: a folder: `config.json` with `auto_map`, `model.safetensors` and the modeling source
      (`SamHFModel.save_pretrained`), `preprocessor_config.json` with `auto_map` and the processor source
      (`SamHFProcessor.save_pretrained`), and the mask-generation pipeline's source named in `config.json`'s
      `custom_pipelines` (`save_pipeline_code`), so the folder runs in `transformers.pipeline` with
      `trust_remote_code=True` where sam_hf is absent. A PEFT adapter is written as PEFT writes it
      (`adapter_config.json`, `adapter_model.safetensors`), with the processor beside it; its pipeline is its
      base model's.
    - `"transformers"`: a folder `transformers.SamModel.from_pretrained` and `SamProcessor.from_pretrained`
      load (`SamHQModel` and `SamHQProcessor` for SAM-HQ): `config.json`, `model.safetensors` and transformers'
      `processor_config.json` at the model's frame (e.g. 128 px for sam-hf-tiny, not transformers' 1024-px
      default).
    - `"meta"`: one state-dict file `segment_anything.sam_model_registry[variant](checkpoint=...)` loads. The
      official code has no processor file; the frame size is read back from the tensor shapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..modeling.checkpoint_conversion import transformers_model
from ..modeling.checkpoint_io import save_meta_checkpoint, save_transformers_checkpoint
from ..pipelines.mask_generation import CUSTOM_PIPELINES, SamHFMaskGenerationPipeline
from ..pretrained import shipped_model_name
from ..processing_sam_hf import SamHFProcessor
from ..remote_code import save_remote_code
from .loading import ADAPTER_CONFIG_NAME

__all__ = ["SAVE_FORMATS", "save_model", "save_pipeline_code"]

SAVE_FORMATS = ("sam_hf", "transformers", "meta")

# What `peft.AutoPeftModel` imports to load an adapter's base model (the adapter config's `auto_mapping`).
# transformers' AutoModel is in PEFT's default import allowlist and loads a sam_hf folder or Hub repo; other
# bases (a shipped name, a Meta file, a transformers SAM folder) only `SamHFModel.from_pretrained` resolves.
_AUTO_MODEL = {"base_model_class": "AutoModel", "parent_library": "transformers"}
_SAM_HF_MODEL = {"base_model_class": "SamHFModel", "parent_library": "sam_hf"}


def save_model(
    model: torch.nn.Module,
    output: str | os.PathLike,
    processor: SamHFProcessor | None = None,
    *,
    format: str = "sam_hf",
) -> str:
    """Write `model` and its processor to `output` in `format` (see the module docstring).

    Args:
        model: a `SamHFModel`, or a `peft.PeftModel` adapter on one (sam_hf format only).
        output: a folder (`"sam_hf"`, `"transformers"`; created if missing) or a file path (`"meta"`).
        processor: the model's processor; None: the one matching `model.config`.
        format: one of `SAVE_FORMATS`.

    Returns:
        `output` as a string.

    Raises:
        ValueError: an unknown format, an adapter in a format other than sam_hf, or `output` of the wrong kind
            (an existing file for a folder format, an existing folder for `"meta"`).
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"format must be one of {SAVE_FORMATS}, got {format!r}")
    output = os.fspath(output)
    is_adapter = hasattr(model, "peft_config")
    if is_adapter and format != "sam_hf":
        raise ValueError(
            f"an adapter is written in the sam_hf format only, got format={format!r}; merge it into its base "
            "first (sam_hf.hub.load_model(..., merge_adapter=True))"
        )
    if format == "meta":
        if os.path.isdir(output):
            raise ValueError(
                f"output must be a file path for the meta format, got the existing folder {output}"
            )
        save_meta_checkpoint(model.state_dict(), output)
        return output
    if os.path.isfile(output):
        raise ValueError(f"output must be a folder for the {format} format, got the existing file {output}")
    processor = processor if processor is not None else SamHFProcessor.from_model_config(model.config)
    if format == "transformers":
        save_transformers_checkpoint(model.config, model.state_dict(), output)
        import transformers

        processor_class = getattr(transformers, transformers_model(model.config).processor_class)
        processor_class(image_processor=processor.to_transformers().image_processor).save_pretrained(output)
        return output
    if is_adapter:
        # SAM has no vocabulary: skip PEFT's check of the base's embeddings, which looks the base up online.
        model.save_pretrained(output, save_embedding_layers=False)
        _record_base_loader(Path(output) / ADAPTER_CONFIG_NAME)
    else:
        model.save_pretrained(output)
        save_pipeline_code(output)
    processor.save_pretrained(output)
    return output


def save_pipeline_code(folder: str | os.PathLike) -> None:
    """Write the mask-generation pipeline's source (with the modules it imports, flattened) into a saved
    sam_hf model folder and name it in its `config.json`'s `custom_pipelines`.

    transformers' `pipeline("mask-generation", model=folder, trust_remote_code=True)` then loads the pipeline
    class from that source and the model with `AutoModel`, without sam_hf. Where sam_hf is imported, its
    `SamHFConfig` drops `custom_pipelines` and the installed pipeline runs without `trust_remote_code`.
    """
    save_remote_code(SamHFMaskGenerationPipeline.__module__, folder)
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = CUSTOM_PIPELINES
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _record_base_loader(adapter_config: Path) -> None:
    """Set the adapter config's `auto_mapping` to a loader of its base that `AutoPeftModel` may import.

    PEFT records the base's class and module (`sam_hf.modeling.modeling_sam_hf`), which its import allowlist
    refuses unless the user passes `import_allowlist`; transformers' AutoModel needs none.
    """
    record = json.loads(adapter_config.read_text(encoding="utf-8"))
    record["auto_mapping"] = (
        _AUTO_MODEL if _is_sam_hf_folder_or_repo(record["base_model_name_or_path"]) else _SAM_HF_MODEL
    )
    adapter_config.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _is_sam_hf_folder_or_repo(base: str) -> bool:
    """`base` is a `SamHFModel.save_pretrained` folder, or a Hub repo of one already in the local cache."""
    if shipped_model_name(base) is not None:
        return False
    if os.path.exists(base):
        config: Any = os.path.join(base, "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(base, "config.json")
    if not isinstance(config, str) or not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") == "sam_hf"
