"""`sam-hf annotate`: the data engine. Automatic masks for a folder or dataset of images -> a `datasets`
dataset with COCO RLE masks plus COCO JSON; resumable, and sharded across processes by `accelerate launch`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import add_model_arguments, load_model, user_input
from .generate import add_generator_arguments, generator_kwargs, thresholds_text

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="automatic masks for many images -> a datasets dataset (+ COCO JSON)",
        description="Run automatic mask generation over IMAGES and write a dataset to --out "
        "with train and test splits (datasets.load_from_disk(OUT); parquet in OUT/data; COCO JSON in "
        "OUT/annotations.json). "
        "Rerun the same command to resume an interrupted run. To split the images across processes, "
        "launch it with accelerate: `accelerate launch --multi_gpu --num_machines 1 --num_processes N "
        "--no_python sam-hf annotate ...` (N GPUs, or N CPU processes on a machine without GPUs; add "
        "ACCELERATE_USE_CPU=true to use CPU processes on a GPU machine). `accelerate launch --cpu "
        "--num_processes N` starts only one process: accelerate's CPU launcher needs mpirun for more.",
    )
    parser.add_argument(
        "images",
        metavar="IMAGES",
        help="a folder of images, a folder written by Dataset.save_to_disk, a COCO .json file or a Hub dataset id",
    )
    add_model_arguments(parser, device=False)
    parser.add_argument("--out", required=True, metavar="DATASET", help="output dataset folder")
    parser.add_argument("--image-column", default="image", help="image column of a dataset input")
    parser.add_argument(
        "--split", default=None, help="split of a dataset input that has splits (default: all, in order)"
    )
    parser.add_argument(
        "--image-root",
        default=None,
        help="image folder of a COCO .json input (default: found from its layout)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of the images held out in the test split, chosen by a hash of the file name "
        "(default 0.2; at least one image when there are two or more; 0: no test split)",
    )
    filters = parser.add_argument_group("quality filters (pseudo-labels)")
    filters.add_argument(
        "--min-predicted-iou", type=float, default=0.0, help="drop masks below this predicted IoU"
    )
    filters.add_argument(
        "--min-stability-score", type=float, default=0.0, help="drop masks below this stability"
    )
    filters.add_argument("--min-area", type=int, default=0, help="drop masks smaller than this many pixels")
    add_generator_arguments(parser)
    parser.add_argument(
        "--push-to-hub", metavar="REPO", default=None, help="push the dataset to this Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run, interrupt_hint="rerun the same command to resume where it stopped")


def run(args: argparse.Namespace) -> int:
    import logging

    from sam_hf.data.sources import open_images
    from sam_hf.inference.annotate import annotate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_input(f"IMAGES {args.images}"):
        images = open_images(args.images, args.image_column, args.split, args.image_root)
        images.check_readable()
    model = load_model(args.model)[0]
    dataset = annotate(
        images,
        model,
        args.out,
        generator_kwargs=generator_kwargs(args),
        min_predicted_iou=args.min_predicted_iou,
        min_stability_score=args.min_stability_score,
        min_area=args.min_area,
        image_column=args.image_column,
        test_fraction=args.test_fraction,
        push_to_hub=args.push_to_hub,
        private=args.private,
        show_progress=not args.no_progress,
    )
    if dataset is not None:
        masks = sum(len(m) for split in dataset.values() for m in split["masks"])
        sizes = ", ".join(f"{len(split)} {name}" for name, split in dataset.items())
        print(f"{masks} masks on {sizes} images; dataset in {args.out}")
        if masks == 0:
            print(
                f"hint: no mask passed the quality filters {thresholds_text(args)}; `sam-hf generate IMAGE` "
                "with the same generator options shows what each filter removes and thresholds that keep masks",
                file=sys.stderr,
            )
    return 0
