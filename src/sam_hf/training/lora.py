"""What trains: LoRA on the mask decoder's attention projections, or the full decoder.

With LoRA, the submodules the decoder class names in `trained_in_full` (SAM-HQ's HQ token, its MLP and
feature fusion; none for SAM) train in full beside the adapters and are saved with them (PEFT's
`modules_to_save`). The image encoder and prompt encoder stay frozen in both modes, so image features can be
cached.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["LORA_TARGET_MODULES", "apply_lora", "decoder_modules_to_save", "freeze_for_decoder_training"]

# Regex (matched in full by PEFT) over module names: every attention projection of the mask decoder.
LORA_TARGET_MODULES = r"mask_decoder\..*(q_proj|k_proj|v_proj|out_proj)"


def freeze_for_decoder_training(model: nn.Module) -> nn.Module:
    """Full decoder fine-tuning: only `mask_decoder.*` parameters require gradients. Returns `model`."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("mask_decoder."))
    return model


def decoder_modules_to_save(model: nn.Module) -> list[str]:
    """The full names (`mask_decoder.<name>`) of what `model`'s mask decoder trains in full with LoRA (its
    class attribute `trained_in_full`); `[]` for SAM's decoder."""
    return [f"mask_decoder.{name}" for name in type(model.mask_decoder).trained_in_full]


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int | None = None,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = LORA_TARGET_MODULES,
    modules_to_save: Sequence[str] | None = None,
    init_lora_weights: bool = True,
    verbose: bool = True,
):
    """Wrap `model` in a PEFT `PeftModel` with LoRA adapters on the decoder; everything else frozen.

    Args:
        model: a `SamHFModel`.
        r: LoRA rank.
        alpha: LoRA scaling numerator (default `2 * r`).
        dropout: dropout on the LoRA input.
        target_modules: regex or list of module names for LoRA; they must all lie in `mask_decoder`.
        modules_to_save: more modules trained in full and saved with the adapter, e.g.
            `["iou_prediction_head"]`, beside the decoder's own (`decoder_modules_to_save`).
        init_lora_weights: PEFT's init; `False` gives non-zero B (for tests of save/load).
        verbose: print the trainable parameter count.

    Returns:
        The `peft.PeftModel`; its `forward` takes the same keyword arguments as `SamHFModel.forward`.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"r must be a positive rank, got {r}")
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        modules_to_save=[*decoder_modules_to_save(model), *(modules_to_save or ())] or None,
        init_lora_weights=init_lora_weights,
    )
    peft_model = get_peft_model(model, config)
    targeted = list(peft_model.targeted_module_names)
    outside = [name for name in targeted if ".mask_decoder." not in f".{name}"]
    if not targeted or outside:
        raise ValueError(
            "target_modules must select modules of the mask decoder only, got "
            f"{len(targeted)} targets, {len(outside)} outside it (e.g. {outside[:3]})"
        )
    if verbose:
        peft_model.print_trainable_parameters()
    return peft_model
