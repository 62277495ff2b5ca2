"""`sam-hf finetune`: fine-tune the mask decoder (LoRA by default) on a segmentation dataset.

Runs the same job as `accelerate launch training/finetune.py` in this process (for several processes:
`accelerate launch --multi_gpu --num_machines 1 --num_processes N --no_python sam-hf finetune ...`), then
measures the base and fine-tuned model on an eval split, writes the model card and optionally pushes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
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


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune the mask decoder with LoRA on a dataset")
    add_model_arguments(parser, what="base model", device=False)
    parser.add_argument(
        "--dataset", required=True, help="Hub id, save_to_disk folder, imagefolder or COCO .json"
    )
    parser.add_argument("--split", default=None)
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--mask-column", default="label")
    parser.add_argument("--mask-format", default="auto")
    parser.add_argument("--prompt", type=parse_prompt_types, default=["box", "point"], help="e.g. box,point")
    parser.add_argument("--max-prompts", type=int, default=8, help="instances per image and step")
    parser.add_argument(
        "--correction-clicks",
        type=int,
        default=0,
        help="extra decoder passes per step, each adding a click in the previous prediction's error region "
        "and feeding its mask back (SAM's interactive training; this loop only, not transformers.Trainer)",
    )
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank; 0 = full decoder fine-tuning")
    parser.add_argument("--modules-to-save", nargs="*", default=None, help="e.g. iou_prediction_head")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume-from-checkpoint", default=None, help="a step-<n> folder or 'latest'")
    parser.add_argument("--no-cache-embeddings", action="store_true", help="encode images every step")
    parser.add_argument("--output-dir", default="out")
    parser.add_argument(
        "--eval-split",
        default=None,
        help="split of --dataset to measure the model on before and after training (eval_results.json, "
        "shown in the model card); default: 'test' or 'validation' when the dataset has one, else none",
    )
    parser.add_argument(
        "--eval-prompt", default="point,3point,box,jittered_box", help="evaluation prompt types"
    )
    parser.add_argument(
        "--eval-max-images", type=int, default=None, help="evaluate on at most this many images"
    )
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="upload the result (user/repo)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import HubPushError, build_model_card, push_to_hub
    from ..training.loop import FinetuneConfig, finetune

    config = FinetuneConfig(
        model=resolve_model(args.model),
        dataset=args.dataset,
        output_dir=args.output_dir,
        split=args.split,
        image_column=args.image_column,
        mask_column=args.mask_column,
        mask_format=args.mask_format,
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
        cache_embeddings=not args.no_cache_embeddings,
    )
    start = time.perf_counter()
    summary = finetune(config, resume_from_checkpoint=args.resume_from_checkpoint)
    runtime = time.perf_counter() - start
    output_dir = summary.get("output_dir")
    if output_dir is None:  # stopped before the last step (another process, or max steps of this run)
        print(f"trained {summary['steps']} steps; no final model yet in {args.output_dir}")
        return 0
    print(f"trained {summary['steps']} steps in {runtime:.1f} s; saved to {output_dir}")
    if "merged_dir" in summary:
        print(
            f"{output_dir} holds the LoRA adapter (it loads with its base: --model {output_dir}); "
            f"{summary['merged_dir']} holds the full model with the adapter merged in, loadable without the base"
        )
    _write_training_summary(config, summary, runtime)
    eval_split = args.eval_split or _default_eval_split(args.dataset)
    if eval_split is not None:
        _evaluate_before_after(args, config, eval_split)
    else:
        print("no evaluation split (--eval-split): the model card states that nothing was measured")
    card = build_model_card(output_dir, args.push_to_hub, in_output_folder=True)
    card.save(os.path.join(output_dir, "README.md"))
    print(f"wrote {os.path.join(output_dir, 'README.md')}")
    if args.push_to_hub:
        try:
            result = push_to_hub(output_dir, args.push_to_hub)
        except HubPushError as error:  # the trained output stays on disk; the message says how to retry
            print(f"sam-hf finetune: {error}", file=sys.stderr)
            return 1
        print(f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    return 0


def _write_training_summary(config, summary: dict, runtime: float) -> None:
    """`training_summary.json`: what the model card reports about the run (see `sam_hf.hub`)."""
    from ..hub import TRAINING_SUMMARY_NAME, load_pretrained, portable_model_name

    model = load_pretrained(summary["output_dir"], verbose=False)
    hyperparameters = {
        key: getattr(config, key)
        for key in ("prompt_types", "max_prompts", "lora_r", "epochs", "max_steps", "batch_size",
                    "learning_rate", "gradient_accumulation_steps", "mixed_precision", "seed")
    }  # fmt: skip
    record = {
        "base_model": portable_model_name(config.model),
        "dataset": config.dataset,
        "dataset_split": config.split,
        "train_runtime_s": round(runtime, 1),
        "steps": summary["steps"],
        "final_loss": summary["losses"][-1] if summary["losses"] else None,
        "trainable_parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        if config.lora_r > 0
        else sum(p.numel() for p in model.mask_decoder.parameters()),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "hyperparameters": {k: ",".join(v) if isinstance(v, list) else v for k, v in hyperparameters.items()},
    }
    with open(os.path.join(summary["output_dir"], TRAINING_SUMMARY_NAME), "w") as f:
        json.dump(record, f, indent=2)


def _default_eval_split(dataset: str) -> str | None:
    """'test' or 'validation' when `dataset` is a saved `DatasetDict` with one; Hub datasets are not probed."""
    for split in ("test", "validation"):
        if os.path.isdir(os.path.join(dataset, split)):
            return split
    return None


def _evaluate_before_after(args: argparse.Namespace, config, split: str) -> None:
    """Measure the base model and the fine-tuned one on `split`; write `eval_results.json` in the output."""
    from ..data.reader import load_segmentation_dataset, to_instances
    from ..evaluation import EVAL_RESULTS_NAME, EvaluationProtocol, timed_run, write_eval_results
    from ..hub import load_pretrained, load_processor

    dataset, stats = load_segmentation_dataset(
        config.dataset, split, config.image_column, config.mask_column, config.mask_format
    )
    if args.eval_max_images is not None:
        dataset = dataset.select(range(min(args.eval_max_images, len(dataset))))
    protocol = EvaluationProtocol(
        prompts=tuple(p.strip() for p in args.eval_prompt.split(",") if p.strip()), seed=config.seed
    )
    model = load_pretrained(config.output_dir).eval()
    processor = load_processor(config.output_dir)

    def samples():
        for row in dataset:
            yield to_instances(row, config.image_column, config.mask_column, stats.mask_format)

    runs = {}
    for name in ("base", "finetuned"):
        adapter_off = (
            model.disable_adapter() if name == "base" and config.lora_r > 0 else contextlib.nullcontext()
        )
        with adapter_off:
            candidate = (
                model if name == "finetuned" or config.lora_r > 0 else load_pretrained(config.model).eval()
            )
            source = config.model if name == "base" else config.output_dir
            runs[name] = timed_run(source, candidate, processor, samples(), protocol, len(dataset))
    path = os.path.join(config.output_dir, EVAL_RESULTS_NAME)
    print(write_eval_results(path, protocol, config.dataset, split, len(dataset), runs))
    print(f"wrote {path}")
