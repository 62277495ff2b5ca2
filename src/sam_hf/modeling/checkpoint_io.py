"""Reading and writing SAM checkpoints in every format, safely.

The same weights come in three formats:

- `"sam_hf"`: this package's folders or Hub repos: `config.json` (`model_type` "sam_hf") and `model.safetensors`
  with Meta's parameter names (transformers' own `from_pretrained` reads them).
- `"transformers"`: folders or Hub repos of transformers' `SamModel` (e.g. facebook/sam-vit-base) or `SamHQModel`
  (e.g. syscv-community/sam-hq-vit-base): `config.json` (`model_type` "sam" or "sam_hq") and `model.safetensors`
  or `pytorch_model.bin` with transformers' parameter names.
- `"meta"`: the official state dicts (Meta's `sam_vit_b_01ec64.pth`, ..., MobileSAM's `mobile_sam.pt`, SAM-HQ's
  `sam_hq_vit_b.pth`, ...), whose names are ours; the image encoder and the mask decoder are told by the keys,
  the variant read from tensor shapes.

Pickles are only ever read with `torch.load(weights_only=True)`; anything else is refused. Loading is strict:
missing, unexpected or mis-shaped tensors are reported before any model is returned.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils.hub import cached_file

from .checkpoint_conversion import (
    TRANSFORMERS_MODEL_TYPES,
    from_transformers_config,
    from_transformers_state_dict,
    infer_config_from_state_dict,
    to_transformers_config,
    to_transformers_state_dict,
)
from .configuration_sam_hf import SamHFConfig

__all__ = [
    "CHECKPOINT_FORMATS",
    "HUB_KWARGS",
    "ResolvedCheckpoint",
    "check_state_dict",
    "hub_cache_miss",
    "load_foreign_checkpoint",
    "load_state_dict_file",
    "resolve_checkpoint",
    "save_meta_checkpoint",
    "save_transformers_checkpoint",
]

CHECKPOINT_FORMATS = ("sam_hf", "transformers", "meta")

# Arguments of `from_pretrained` that only say where and how to fetch files.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")

_EXPECTED = (
    "expected one of: a sam_hf folder or Hub repo (config.json with model_type 'sam_hf' + model.safetensors), "
    "a transformers SAM or SAM-HQ folder or Hub repo (config.json with model_type 'sam' or 'sam_hq' + "
    "model.safetensors or pytorch_model.bin), or an official state dict file (.pth/.pt/.bin/.safetensors, e.g. "
    "sam_vit_b_01ec64.pth, sam_hq_vit_b.pth)"
)
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a pickle (`.pth`, `.pt`, `.bin`) holding tensors only.

    Raises:
        ValueError: if the file is not a state dict, or its pickle holds anything but tensors and plain
            containers (unpickling it could run code, so it is refused before anything executes).
    """
    path = str(path)
    if path.endswith(".safetensors"):
        try:
            return load_file(path)
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error}); {_EXPECTED}") from error
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(error), flags=re.S)
        detail = " ".join((detail.group(1) if detail else str(error)).split()).split(". Please")[0]
        raise ValueError(
            f"refusing to load {path}: it holds something other than tensors and plain containers ({detail}); "
            f"unpickling it fully could run arbitrary code, so it is not loaded; {_EXPECTED}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({error}); {_EXPECTED}") from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"{path} must hold a state dict (a dict of name -> tensor), got {type(state_dict).__name__}"
            + (f" with keys {sorted(state_dict)[:5]}" if isinstance(state_dict, dict) else "")
        )
    return state_dict


@dataclass
class ResolvedCheckpoint:
    """Where a checkpoint's files are, once found locally or downloaded.

    Args:
        format: one of `CHECKPOINT_FORMATS`.
        source: what the user passed (path or Hub id).
        config_dict: parsed config.json (None for `"meta"`).
        weights_files: local paths of the weight files (empty for `"sam_hf"`, which transformers loads itself).
    """

    format: str
    source: str
    config_dict: dict[str, Any] | None
    weights_files: list[str]


def hub_cache_miss(repo_id: str, hub_kwargs: dict[str, Any]) -> str | None:
    """The cause to give when files of the Hub repo `repo_id` are not in the local Hub cache and the Hub is not
    asked for them (`local_files_only`, or `HF_HUB_OFFLINE`); None when the Hub may be asked."""
    from huggingface_hub import constants

    if hub_kwargs.get("local_files_only"):
        why = "local_files_only is set"
    elif constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set"
    else:
        return None
    return f"{repo_id!r} is not in the local Hub cache, and the Hub is not consulted ({why})"


def resolve_checkpoint(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> ResolvedCheckpoint:
    """Find out which format `name_or_path` is in and fetch its config and weights (local path or Hub id).

    Args:
        name_or_path: a state dict file, a folder, or a Hub repo id.
        **hub_kwargs: any of `HUB_KWARGS`, passed to transformers' `cached_file`.

    Raises:
        ValueError: if it is none of the formats (the message lists what was found and what is expected).
    """
    source = str(name_or_path)
    if os.path.isfile(source):
        return ResolvedCheckpoint("meta", source, None, [source])
    try:
        # Raising for a Hub repo: a missing config.json, an unreachable Hub and an offline cache miss would all
        # give None otherwise.
        config_file = cached_file(
            source,
            "config.json",
            _raise_exceptions_for_missing_entries=not os.path.isdir(source),
            **hub_kwargs,
        )
    except OSError as error:
        from huggingface_hub.errors import LocalEntryNotFoundError

        cause = (
            hub_cache_miss(source, hub_kwargs)
            if isinstance(error.__cause__, LocalEntryNotFoundError)
            else None
        )
        raise ValueError(
            cause or f"{source!r} is neither a local file or folder nor a reachable Hub repo ({error})"
        ) from error
    if config_file is None:
        raise ValueError(f"{source!r} has no config.json (found: {sorted(os.listdir(source))}); {_EXPECTED}")
    with open(config_file, encoding="utf-8") as f:
        config_dict = json.load(f)
    model_type = config_dict.get("model_type")
    if model_type == "sam_hf":
        return ResolvedCheckpoint("sam_hf", source, config_dict, [])
    if model_type not in TRANSFORMERS_MODEL_TYPES:
        raise ValueError(f"{source!r} has a config.json with model_type {model_type!r}; {_EXPECTED}")
    for name in _TRANSFORMERS_WEIGHTS:
        weights = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if weights is None:
            continue
        if name.endswith(".index.json"):
            with open(weights, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return ResolvedCheckpoint(
                "transformers", source, config_dict, [cached_file(source, s, **hub_kwargs) for s in shards]
            )
        return ResolvedCheckpoint("transformers", source, config_dict, [weights])
    found = sorted(os.listdir(source)) if os.path.isdir(source) else "config.json only"
    raise ValueError(
        f"{source!r} is a transformers SAM checkpoint without weights: expected one of {_TRANSFORMERS_WEIGHTS}, "
        f"found {found}"
    )


def load_foreign_checkpoint(
    model_class: type[torch.nn.Module],
    checkpoint: ResolvedCheckpoint,
    config: SamHFConfig | None = None,
    dtype: torch.dtype | str | None = None,
) -> torch.nn.Module:
    """Build `model_class` (SamHFModel) from a `"transformers"` or `"meta"` checkpoint, every tensor loaded strictly.

    Args:
        model_class: the model class, called with the config.
        checkpoint: from `resolve_checkpoint`.
        config: use this config instead of the checkpoint's (transformers) or the one read from shapes (meta).
        dtype: a torch dtype or its name; "auto" keeps the checkpoint's; None gives torch's default dtype.

    Returns:
        The model in eval mode.
    """
    if config is not None and not isinstance(config, SamHFConfig):
        raise TypeError(f"config must be a SamHFConfig or None, got {type(config).__name__}")
    config = copy.deepcopy(config)  # the model records where it came from in its own config
    target_dtype = None if dtype == "auto" else dtype or torch.get_default_dtype()
    if isinstance(target_dtype, str):
        target_dtype = getattr(torch, target_dtype, None)
    if dtype != "auto" and not isinstance(target_dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, its name, 'auto' or None, got {dtype!r}")
    state_dict: dict[str, torch.Tensor] = {}
    for path in checkpoint.weights_files:
        state_dict.update(load_state_dict_file(path))
    if checkpoint.format == "transformers":
        config = config or from_transformers_config(checkpoint.config_dict)
        state_dict = from_transformers_state_dict(state_dict, config)
    elif checkpoint.format == "meta":
        if "vision_encoder.pos_embed" in state_dict:
            raise ValueError(
                f"{checkpoint.source} holds transformers parameter names: load the folder holding it and its "
                "config.json instead"
            )
        config = config or infer_config_from_state_dict(state_dict)
    else:
        raise ValueError(f"checkpoint.format must be 'transformers' or 'meta', got {checkpoint.format!r}")
    with torch.device("meta"):  # every tensor comes from the checkpoint: skip random initialisation
        model = model_class(config)
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state_dict, checkpoint.source)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if target_dtype is not None:
        model.to(target_dtype)
    # What transformers' own loading records, and what PEFT writes as an adapter's base.
    model.name_or_path = model.config.name_or_path = checkpoint.source
    return model.eval()


def check_state_dict(
    expected: dict[str, torch.Size], state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Raise a ValueError naming missing, unexpected and mis-shaped tensors, before anything is loaded."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} ({len(items)}): {items[:8]}{' ...' if len(items) > 8 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if items
        ]
        raise ValueError(f"the weights in {source} do not fit the model: {'; '.join(parts)}")


# ---------------------------------------------------------------------------------------------------------------
# Writing the foreign formats (ours is `SamHFModel.save_pretrained`: safetensors)
# ---------------------------------------------------------------------------------------------------------------


def save_transformers_checkpoint(
    config: SamHFConfig, state_dict: dict[str, torch.Tensor], folder: str | os.PathLike
) -> None:
    """Write a folder `transformers.SamModel.from_pretrained` (`SamHQModel` for SAM-HQ) loads: config.json +
    model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_transformers_config(config).save_pretrained(folder)
    weights = to_transformers_state_dict(state_dict, config)
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors", {"format": "pt"})


def save_meta_checkpoint(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict `segment_anything.sam_model_registry[variant](checkpoint=path)` loads (for SAM-HQ,
    `segment_anything_hq`'s; for MobileSAM, `mobile_sam`'s)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, path)
