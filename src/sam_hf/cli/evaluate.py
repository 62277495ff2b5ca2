"""`sam-hf evaluate`: run the `sam_hf-interactive-v1` protocol on a dataset split and write eval_results.json.

`--model` is a SamHF folder (`save_pretrained`) or a PEFT adapter folder (with `adapter_config.json`); for an
adapter, the base model (adapter disabled) and the fine-tuned model are both measured, on the same prompts.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from . import add_model_arguments, load_model, resolve_device, resolve_model

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure mIoU/Dice per prompt type and interactive NoC@85/90 (protocol sam_hf-interactive-v1)",
        description=__doc__,
    )
    add_model_arguments(parser, what="model or PEFT adapter folder")
    parser.add_argument(
        "--dataset", required=True, help="dataset folder (save_to_disk) or Hub dataset id, with image + masks"
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--prompt",
        default="point,3point,box,jittered_box,clicks",
        help="comma-separated prompt types: point, 3point, box, jittered_box, clicks (default: all)",
    )
    parser.add_argument(
        "--max-clicks", type=int, default=20, help="clicks per object for `clicks` (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt simulation (default 0)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--output",
        default=None,
        help="results file (default: eval_results.json inside --model if it is a local folder, else here)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import EVAL_RESULTS_NAME, EvaluationProtocol, timed_run, write_eval_results

    protocol = EvaluationProtocol(
        prompts=tuple(p.strip() for p in args.prompt.split(",") if p.strip()),
        seed=args.seed,
        max_clicks=args.max_clicks,
    )
    args.model = resolve_model(args.model)
    device = torch.device(resolve_device(args.device))
    model, processor, resolved = load_model(args.model, merge_adapter=False)
    model.to(device)
    is_adapter = resolved.base is not None
    dataset, split = _load_split(args.dataset, args.split, args.max_images)

    runs = {}
    for name in ("base", "finetuned") if is_adapter else ("model",):
        # The base run is the same PeftModel with its adapter switched off: no second copy of the weights.
        with model.disable_adapter() if name == "base" else contextlib.nullcontext():
            source = resolved.name if name != "base" else resolved.base
            runs[name] = timed_run(source, model, processor, _samples(dataset), protocol, len(dataset))
    if args.output:
        path = Path(args.output)
    else:  # inside a local model folder; for Hub ids and shipped names, in the working directory
        path = (Path(args.model) if Path(args.model).is_dir() else Path()) / EVAL_RESULTS_NAME
    print(write_eval_results(path, protocol, args.dataset, split, len(dataset), runs))
    print(f"wrote {path}")
    return 0


def _load_split(name: str, split: str, max_images: int | None):
    """-> (dataset, split name or None for a saved single `Dataset`, which has no splits)."""
    import datasets

    if Path(name).exists():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split must be one of {sorted(loaded)} for {name}, got {split!r}")
            loaded = loaded[split]
        else:
            split = None
    else:
        loaded = datasets.load_dataset(name, split=split)
    if max_images is not None:
        loaded = loaded.select(range(min(max_images, len(loaded))))
    return loaded, split


def _samples(dataset):
    """Yield `(image (H, W, 3) uint8, masks (K, H, W) bool)` from an `image` column and a `masks` column
    (a list of masks per image) or a `mask` column (one mask per row)."""
    import numpy as np

    if "image" not in dataset.column_names or not {"masks", "mask"} & set(dataset.column_names):
        raise ValueError(
            f"--dataset needs an `image` column and a `masks` or `mask` column, got {dataset.column_names}"
        )
    for example in dataset:
        image = np.asarray(
            example["image"].convert("RGB") if hasattr(example["image"], "convert") else example["image"]
        )
        masks = example["masks"] if "masks" in example else [example["mask"]]
        yield image, np.stack([np.asarray(mask) > 0 for mask in masks])
