"""The data-engine loop measured: does retraining on an annotator's own labels make labelling faster?

A simulated annotator (`sam_hf.labeling.simulated`: first click and correction clicks from the package's
prompt simulator on ground-truth masks until IoU >= 0.90 or 20 clicks, then brush and eraser dabs until IoU
>= 0.95 or 30 dabs, then accept) drives `LabelSession`
on images of the procedural `cells` domain (`sam_hf.data.synthetic`), which the shipped `sam-hf-tiny` never
saw. It labels `--images` images, the session retrains once on those labels (by default the app's round,
`sam_hf.labeling.retrain.RETRAIN_DEFAULTS`: the whole mask decoder with interactive correction passes, as the
clicks it must learn to answer come one after another; `--lora-r 8`: LoRA on it), then the annotator labels
`--heldout` held-out images with the new model, and, in a second session, the same held-out images with the
starting model. The default 128 px is `sam-hf-tiny`'s input size: larger images are downscaled to it, adding
pixels the model never sees.

Printed: per phase, objects, clicks per object, NoC@85 / NoC@90 (clicks to reach IoU 0.85 / 0.90, 20 when
never reached), failures at 90, mIoU after one click, brush dabs per object, the labels' mIoU with the ground
truth, and the ratios retrained / base of clicks and of dabs per object on the held-out images. `--json` also writes everything, per-object click curves included.

    python benchmarks/bench_label_loop.py --threads 1            # ~5 min on a shared 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from sam_hf.labeling.retrain import RETRAIN_DEFAULTS
from sam_hf.labeling.simulated import run_label_loop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sam-hf-tiny")
    parser.add_argument("--images", type=int, default=24, help="images labelled before retraining")
    parser.add_argument("--heldout", type=int, default=10, help="held-out images labelled after")
    parser.add_argument("--image-size", type=int, default=128)
    # the retraining round's settings default to the app's (`RETRAIN_DEFAULTS`)
    parser.add_argument("--epochs", type=int, default=RETRAIN_DEFAULTS["epochs"])
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=RETRAIN_DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=RETRAIN_DEFAULTS["learning_rate"])
    parser.add_argument(
        "--lora-r", type=int, default=RETRAIN_DEFAULTS["lora_r"], help="0: fine-tune the whole mask decoder"
    )
    parser.add_argument(
        "--correction-clicks",
        type=int,
        default=RETRAIN_DEFAULTS["correction_clicks"],
        help="interactive training passes per step",
    )
    parser.add_argument(
        "--max-strokes", type=int, default=30, help="brush dabs after the clicks (0: accept the clicks' mask)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep the images and datasets here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 on a shared machine",
    )
    parser.add_argument("--json", default=None, help="write all results to this file")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = run_label_loop(
            args.model,
            args.work_dir or scratch,
            num_images=args.images,
            num_heldout=args.heldout,
            image_size=args.image_size,
            seed=args.seed,
            max_strokes=args.max_strokes,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora_r=args.lora_r,
            correction_clicks=args.correction_clicks,
        )
    elapsed = time.perf_counter() - start
    length = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epochs"
    print(
        f"\nmodel {args.model}, cells {args.image_size}px: {args.images} images labelled, retrained "
        f"{length} (batch {args.batch_size}, lr {args.learning_rate}, lora_r {args.lora_r}, "
        f"correction_clicks {args.correction_clicks}) on {result['retrain']['num_masks']} masks, "
        f"{args.heldout} held-out images; annotator: clicks to IoU >= 0.90 or 20 clicks, then up to "
        f"{args.max_strokes} brush dabs to IoU >= 0.95, seed {args.seed}"
    )
    header = (
        f"{'phase':<36}{'objects':>8}{'clicks/obj':>11}{'NoC@85':>8}{'NoC@90':>8}{'NoF@90':>8}{'mIoU@1':>8}"
        f"{'dabs/obj':>9}{'label mIoU':>11}"
    )
    print(header)
    phases = (
        ("labelled, base model (round 0)", "labelled"),
        ("held-out, base model", "heldout_base"),
        ("held-out, retrained model (round 1)", "heldout_retrained"),
    )
    for title, key in phases:
        s = result[key]
        print(
            f"{title:<36}{s['objects']:>8}{s['clicks_per_object']:>11.2f}{s['noc@85']:>8.2f}"
            f"{s['noc@90']:>8.2f}{s['nof@90']:>8}{s['miou@1']:>8.3f}{s['strokes_per_object']:>9.2f}"
            f"{s['label_miou']:>11.3f}"
        )
    base, retrained = result["heldout_base"], result["heldout_retrained"]
    print(
        f"held-out clicks per object, retrained / base: {retrained['clicks_per_object'] / base['clicks_per_object']:.3f}"
        f"  (NoC@90 {retrained['noc@90'] / base['noc@90']:.3f}, NoC@85 {retrained['noc@85'] / base['noc@85']:.3f})"
    )
    if base["strokes_per_object"]:
        print(
            "held-out brush dabs per object, retrained / base: "
            f"{retrained['strokes_per_object'] / base['strokes_per_object']:.3f}"
        )
    print(f"session round_stats: {json.dumps(result['round_stats'])}")
    print(f"total {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "elapsed_s": elapsed, **result}, f, indent=1)


if __name__ == "__main__":
    main()
