"""The official builders by the same names: `segment_anything`'s `sam_model_registry`, `build_sam`,
`build_sam_vit_b/l/h`, MobileSAM's `build_sam_vit_t` and SAM-HQ's `build_sam_vit_tiny` (Light HQ-SAM).

Code written for the official package (`sam = sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")`),
for MobileSAM (`sam_model_registry["vit_t"](checkpoint="mobile_sam.pt")`) or for SAM-HQ
(`sam_model_registry["vit_b"](checkpoint="sam_hq_vit_b.pth")`, `sam_model_registry["vit_tiny"](...)`) runs
unchanged with `from sam_hf import sam_model_registry` and gets a `SamHFModel` in eval mode. The three packages
share the names `vit_b/l/h`: the checkpoint says which mask decoder it holds (SAM's or SAM-HQ's), and that is
the model built. As in the official `segment_anything/build_sam.py`, `"default"` is ViT-H and `checkpoint=None`
gives random weights, SAM's for `vit_b/l/h` (a random SAM-HQ: `SamHFModel(SamHFConfig.from_preset("sam_hq_vit_b"))`).
A checkpoint may be any form `sam_hf.hub.load_model` resolves (an official `.pth`, a sam_hf or transformers
`SamModel`/`SamHQModel` folder, a Hub id, a shipped name, an adapter, which is merged into its base); it must
hold the requested size.
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
    "build_sam_vit_tiny",
    "sam_model_registry",
]

# Registry name -> the `SAM_HF_PRESETS` architectures its builder accepts from a checkpoint; the first is built
# when there is none.
_ACCEPTED = {
    "vit_b": ("vit_b", "sam_hq_vit_b"),
    "vit_l": ("vit_l", "sam_hq_vit_l"),
    "vit_h": ("vit_h", "sam_hq_vit_h"),
    "vit_t": ("vit_t",),
    "vit_tiny": ("sam_hq_vit_tiny",),
}


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-H (632M-parameter image encoder): random weights, or those of `checkpoint` (see `build_sam_vit_b`)."""
    return _build("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-L (307M-parameter image encoder): random weights, or those of `checkpoint` (see `build_sam_vit_b`)."""
    return _build("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """SAM ViT-B (86M-parameter image encoder), as the official `build_sam_vit_b`, or SAM-HQ ViT-B when the
    checkpoint holds SAM-HQ's decoder, as `segment_anything_hq`'s.

    Args:
        checkpoint: None for random weights (SAM's, the package's initialisation); else a model in any form
            `sam_hf.hub.load_model` resolves: official `.pth` (e.g. `sam_vit_b_01ec64.pth`, `sam_hq_vit_b.pth`),
            sam_hf or transformers SAM / SAM-HQ folder, Hub repo id, shipped model name, PEFT adapter or
            `sam-hf finetune` output (merged).

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


def build_sam_vit_tiny(checkpoint: str | os.PathLike | None = None) -> SamHFModel:
    """Light HQ-SAM (MobileSAM's TinyViT-5M image encoder, SAM-HQ's mask decoder), as `segment_anything_hq`'s
    `build_sam_vit_tiny`: random weights, or those of `checkpoint` (e.g. `sam_hq_vit_tiny.pth`; see
    `build_sam_vit_b`)."""
    return _build("vit_tiny", checkpoint)


build_sam = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., SamHFModel]] = {
    "default": build_sam,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
    "vit_tiny": build_sam_vit_tiny,
}


def _build(name: str, checkpoint: str | os.PathLike | None) -> SamHFModel:
    """A `SamHFModel` of an architecture registry entry `name` accepts (`_ACCEPTED`; any other name is one
    `SAM_HF_PRESETS` architecture), random or loaded from `checkpoint`."""
    presets = _ACCEPTED.get(name, (name,))
    if checkpoint is None:
        return SamHFModel(SamHFConfig.from_preset(presets[0])).eval()
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path, a Hub id, a shipped model name or None, got {type(checkpoint).__name__}"
        )
    model, _, resolved = load_model(checkpoint, merge_adapter=True, dtype=torch.float32, verbose=False)
    if any(_matches(model.config, preset) for preset in presets):
        return model
    found = next(
        (other for other, accepted in _ACCEPTED.items() if any(_matches(model.config, p) for p in accepted)),
        None,
    )
    holds = (
        f"a {found} model: use sam_model_registry[{found!r}]"
        if found
        else "no SAM ViT-B/L/H, MobileSAM, SAM-HQ or Light HQ-SAM model"
    )
    differences = _architecture_differences(model.config, SamHFConfig.from_preset(presets[0]))
    raise ValueError(
        f"checkpoint {os.fspath(checkpoint)!r} ({resolved.describe()}) does not hold a {name} model: "
        f"{'; '.join(differences)}. It holds {holds} (sam_hf.hub.load_pretrained loads any architecture)"
    )


def _matches(config: SamHFConfig, preset: str) -> bool:
    return not _architecture_differences(config, SamHFConfig.from_preset(preset))


def _architecture_differences(config: SamHFConfig, expected: SamHFConfig) -> list[str]:
    """`section.field=value (expected: value)` for every constructor field of a config section that differs."""
    differences = []
    for section_name in SamHFConfig.sub_configs:
        section, wanted = getattr(config, section_name), getattr(expected, section_name)
        if type(section) is not type(wanted):
            kind = "encoder_type" if hasattr(wanted, "encoder_type") else "decoder_type"
            differences.append(
                f"{section_name}.{kind}={getattr(section, kind)!r} (expected {getattr(wanted, kind)!r})"
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
