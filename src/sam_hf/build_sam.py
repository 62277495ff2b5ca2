"""The official `segment_anything` builders by the same names: `sam_model_registry`, `build_sam`, `build_sam_vit_b/l/h`,
and MobileSAM's `build_sam_vit_t`.

Code written for the official package (`sam = sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`)
or for MobileSAM (`sam_model_registry["vit_t"](checkpoint="mobile_sam.pt")`) runs unchanged with
`from sam_hf import sam_model_registry` and gets a `SamHFModel` in eval mode. As in the
official `segment_anything/build_sam.py`, `"default"` is ViT-H and `checkpoint=None` gives random weights.
A checkpoint may be any form `sam_hf.hub.load_model` resolves (a Meta `.pth`, a sam_hf or transformers SAM
folder, a Hub id, a shipped name, an adapter, which is merged into its base); it must hold the requested size.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch

from .hub.loading import load_model
from .modeling import SamHFConfig, SamHFModel

__all__ = [
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]

_SIZES = ("vit_b", "vit_l", "vit_h", "vit_t")


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-H (632M-parameter image encoder): random weights, or those of `checkpoint` (see `build_sam_vit_b`)."""
    return _build("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-L (307M-parameter image encoder): random weights, or those of `checkpoint` (see `build_sam_vit_b`)."""
    return _build("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-B (86M-parameter image encoder), as the official `build_sam_vit_b`.

    Args:
        checkpoint: None for random weights (the package's initialisation); else a model in any form
            `sam_hf.hub.load_model` resolves: Meta `.pth` (e.g. `sam_vit_b_01ec64.pth`), sam_hf or transformers
            SAM folder, Hub repo id, shipped model name, PEFT adapter or `sam-hf finetune` output (merged).

    Returns:
        A float32 `SamHFModel` in eval mode on the CPU (move it with `.to(device)`).

    Raises:
        TypeError: `checkpoint` is not a path, a name or None.
        ValueError: `checkpoint` cannot be resolved, or holds a model of another size (the message names the
            differing fields and the size it does hold).
    """
    return _build("vit_b", checkpoint)


def build_sam_vit_t(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """MobileSAM (TinyViT-5M image encoder, SAM's prompt encoder and mask decoder), as MobileSAM's
    `build_sam_vit_t`: random weights, or those of `checkpoint` (e.g. `mobile_sam.pt`; see `build_sam_vit_b`)."""
    return _build("vit_t", checkpoint)


build_sam = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., SamHFModel]] = {
    "default": build_sam,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
}


def _build(preset: str, checkpoint: str | os.PathLike | None) -> SamHFModel:
    """A `SamHFModel` of the `SAM_HF_PRESETS` architecture `preset`, random or loaded from `checkpoint`."""
    if checkpoint is None:
        return SamHFModel(SamHFConfig.from_preset(preset)).eval()
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path, a Hub id, a shipped model name or None, got {type(checkpoint).__name__}"
        )
    model, _, resolved = load_model(checkpoint, merge_adapter=True, dtype=torch.float32, verbose=False)
    differences = _architecture_differences(model.config, SamHFConfig.from_preset(preset))
    if differences:
        found = next(
            (s for s in _SIZES if not _architecture_differences(model.config, SamHFConfig.from_preset(s))),
            None,
        )
        holds = (
            f"a {found} model: use sam_model_registry[{found!r}]"
            if found
            else "no SAM ViT-B/L/H or MobileSAM model"
        )
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint)!r} ({resolved.describe()}) does not hold a {preset} model: "
            f"{'; '.join(differences)}. It holds {holds} (sam_hf.hub.load_pretrained loads any architecture)"
        )
    return model


def _architecture_differences(config: SamHFConfig, expected: SamHFConfig) -> list[str]:
    """`section.field=value (expected: value)` for every constructor field of a config section that differs."""
    differences = []
    for section_name in SamHFConfig.sub_configs:
        section, wanted = getattr(config, section_name), getattr(expected, section_name)
        if type(section) is not type(wanted):
            differences.append(
                f"{section_name}.encoder_type={section.encoder_type!r} (expected {wanted.encoder_type!r})"
            )
            continue
        fields = inspect.signature(type(wanted).__init__).parameters
        for field in fields:
            if field in ("self", "kwargs"):
                continue
            if getattr(section, field) != getattr(wanted, field):
                differences.append(
                    f"{section_name}.{field}={getattr(section, field)!r} (expected {getattr(wanted, field)!r})"
                )
    return differences
