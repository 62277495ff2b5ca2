"""`sam-hf finetune`: fine-tune the mask decoder (LoRA by default) on a segmentation dataset.

Runs `sam_hf.training.job.run_finetune`, the job `accelerate launch training/finetune.py` runs: training,
then the base and fine-tuned model measured on an eval split, the summary, the model card and an optional
push. For several processes: `accelerate launch --multi_gpu --num_machines 1 --num_processes N --no_python
sam-hf finetune ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from . import add_model_arguments, resolve_model

__all__ = ["add_parser", "parse_prompt_types"]


def parse_prompt_types(text: str) -> list[str]:
    """`"box,point"` -> `["box", "point"]`, each one of the collator's prompt types."""
    from ..training.collator import PROMPT_TYPES

    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds or set(kinds) - set(PROMPT_TYPES):
        raise argparse.ArgumentTypeError(f"--prompt expects a comma list of {PROMPT_TYPES}, got {text!r}")
    return kinds


def _eval_split(text: str) -> str | None:
    return None if text == "none" else text


def _config_defaults() -> dict[str, Any]:
    """`FinetuneConfig`'s field defaults, the command's defaults, so both describe the same run."""
    from ..training import FinetuneConfig

    return {
        field.name: field.default_factory()
        if field.default_factory is not dataclasses.MISSING
        else field.default
        for field in dataclasses.fields(FinetuneConfig)
    }


def add_parser(subparsers: Any) -> None:
    default = _config_defaults()
    parser = subparsers.add_parser("finetune", help="fine-tune the mask decoder with LoRA on a dataset")
    add_model_arguments(parser, what="base model", device=False)
    parser.add_argument(
        "--dataset", required=True, help="Hub id, save_to_disk folder, imagefolder or COCO .json"
    )
    parser.add_argument("--split", default=default["split"])
    parser.add_argument("--image-column", default=default["image_column"])
    parser.add_argument("--mask-column", default=default["mask_column"])
    parser.add_argument("--mask-format", default=default["mask_format"])
    parser.add_argument(
        "--image-root",
        default=default["image_root"],
        help="image folder of a COCO .json dataset (default: found from its layout)",
    )
    parser.add_argument(
        "--prompt", type=parse_prompt_types, default=default["prompt_types"], help="e.g. box,point"
    )
    parser.add_argument(
        "--max-prompts", type=int, default=default["max_prompts"], help="instances per image and step"
    )
    parser.add_argument(
        "--correction-clicks",
        type=int,
        default=default["correction_clicks"],
        help="extra decoder passes per step, each adding a click in the previous prediction's error region "
        "and feeding its mask back (SAM's interactive training; this loop only, not transformers.Trainer)",
    )
    parser.add_argument(
        "--lora-r", type=int, default=default["lora_r"], help="LoRA rank; 0 = full decoder fine-tuning"
    )
    parser.add_argument(
        "--modules-to-save", nargs="*", default=default["modules_to_save"], help="e.g. iou_prediction_head"
    )
    parser.add_argument(
        "--epochs", type=int, default=default["epochs"], help="passes over the dataset (default: %(default)s)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=default["max_steps"], help="optimizer steps; overrides --epochs"
    )
    parser.add_argument("--batch-size", type=int, default=default["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=default["learning_rate"])
    parser.add_argument(
        "--gradient-accumulation-steps", type=int, default=default["gradient_accumulation_steps"]
    )
    parser.add_argument(
        "--mixed-precision", default=default["mixed_precision"], choices=["no", "fp16", "bf16"]
    )
    parser.add_argument("--seed", type=int, default=default["seed"])
    parser.add_argument("--checkpoint-every", type=int, default=default["checkpoint_every"])
    parser.add_argument("--resume-from-checkpoint", default=None, help="a step-<n> folder or 'latest'")
    parser.add_argument(
        "--no-cache-embeddings",
        dest="cache_embeddings",
        action="store_false",
        default=default["cache_embeddings"],
        help="encode images every step",
    )
    parser.add_argument("--output-dir", default=default["output_dir"])
    parser.add_argument(
        "--eval-split",
        type=_eval_split,
        default=default["eval_split"],
        help="split of --dataset to measure the model on before and after training (eval_results.json, "
        "shown in the model card); 'auto' (default): 'test' or 'validation' when the dataset has one; "
        "'none': no evaluation",
    )
    parser.add_argument(
        "--eval-prompt",
        default=",".join(default["eval_prompts"]),
        help="evaluation prompt types (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-max-images",
        type=int,
        default=default["eval_max_images"],
        help="evaluate on at most this many images",
    )
    parser.add_argument(
        "--push-to-hub",
        default=default["push_to_hub"],
        metavar="REPO_ID",
        help="upload the result (user/repo)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import HubPushError
    from ..training import FinetuneConfig
    from ..training.job import run_finetune

    resolved = resolve_model(args.model)
    config = FinetuneConfig(
        model=resolved.name,
        dataset=args.dataset,
        output_dir=args.output_dir,
        split=args.split,
        image_column=args.image_column,
        mask_column=args.mask_column,
        mask_format=args.mask_format,
        image_root=args.image_root,
        prompt_types=args.prompt,
        max_prompts=args.max_prompts,
        correction_clicks=args.correction_clicks,
        lora_r=args.lora_r,
        modules_to_save=args.modules_to_save,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        cache_embeddings=args.cache_embeddings,
        eval_split=args.eval_split,
        eval_prompts=[p.strip() for p in args.eval_prompt.split(",") if p.strip()],
        eval_max_images=args.eval_max_images,
        push_to_hub=args.push_to_hub,
    )
    try:
        run_finetune(config, resume_from_checkpoint=args.resume_from_checkpoint, resolved=resolved)
    except HubPushError as error:  # the trained output stays on disk; the message says how to retry
        print(f"sam-hf finetune: {error}", file=sys.stderr)
        return 1
    return 0
