"""`sam-hf evaluate`: run the `sam_hf-interactive-v1` protocol on a dataset split and write eval_results.json.

`--model` is a SamHF folder (`save_pretrained`) or a PEFT adapter folder (with `adapter_config.json`); for an
adapter, the base model (adapter disabled) and the fine-tuned model are both measured, on the same prompts.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from . import add_model_arguments, load_model, resolve_device, user_input

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure mIoU/Dice per prompt type and interactive NoC@85/90 (protocol sam_hf-interactive-v1)",
        description=__doc__,
    )
    add_model_arguments(parser, what="model or PEFT adapter folder")
    parser.add_argument(
        "--dataset",
        required=True,
        help="dataset folder (save_to_disk, e.g. `sam-hf annotate` output), image folder, COCO .json or Hub "
        "dataset id, with an `image` column and masks (found as in sam_hf.data.reader)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="split to evaluate (default: test; ignored for a dataset without splits)",
    )
    parser.add_argument(
        "--image-root",
        default=None,
        help="image folder of a COCO .json dataset (default: found from its layout)",
    )
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

    from ..data.reader import load_segmentation_dataset, to_instances
    from ..evaluation import EVAL_RESULTS_NAME, EvaluationProtocol, timed_run, write_eval_results

    protocol = EvaluationProtocol(
        prompts=tuple(p.strip() for p in args.prompt.split(",") if p.strip()),
        seed=args.seed,
        max_clicks=args.max_clicks,
    )
    device = torch.device(resolve_device(args.device))
    with user_input(f"--dataset {args.dataset}"):
        dataset, stats = load_segmentation_dataset(args.dataset, args.split, image_root=args.image_root)
    model, processor, resolved = load_model(args.model, merge_adapter=False)
    model.to(device)
    is_adapter = resolved.base is not None
    if args.max_images is not None:
        dataset = dataset.select(range(min(args.max_images, len(dataset))))

    def samples():
        for row in dataset:
            yield to_instances(row, "image", stats.mask_column, stats.mask_format)

    runs = {}
    for name in ("base", "finetuned") if is_adapter else ("model",):
        # The base run is the same PeftModel with its adapter switched off: no second copy of the weights.
        with model.disable_adapter() if name == "base" else contextlib.nullcontext():
            source = resolved.name if name != "base" else resolved.base
            runs[name] = timed_run(source, model, processor, samples(), protocol, len(dataset))
    if args.output:
        path = Path(args.output)
    else:  # inside a local model folder; for Hub ids and shipped names, in the working directory
        path = (
            Path(resolved.name) if resolved.is_local and Path(resolved.name).is_dir() else Path()
        ) / EVAL_RESULTS_NAME
    print(write_eval_results(path, protocol, args.dataset, stats.split, len(dataset), runs))
    print(f"wrote {path}")
    return 0
