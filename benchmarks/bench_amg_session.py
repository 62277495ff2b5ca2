"""Automatic mask generation as a user's script runs it: every generator in ONE process, one after the other.

`bench_amg.py` gives each run a fresh process; a script that loads the official generator and ours side by
side shares one allocator and one set of threads, which is what this measures. `--variant` picks the family
member and its reference: SAM ViT-B (`vit_b`, `segment_anything`), MobileSAM (`vit_t`, `mobile_sam`), SAM-HQ
(`sam_hq_vit_b`) or Light HQ-SAM (`sam_hq_vit_tiny`), both against `segment_anything_hq`.
Same seeded random weights (the reference's registry, loaded strictly into ours; see `_variants.py`),
scikit-image's astronaut at 512x512, `points_per_side` 16 by default, thresholds open (`pred_iou_thresh=0`,
`stability_score_thresh=0`, so every candidate is post-processed). Runs, in this order:

- the reference package's `SamAutomaticMaskGenerator` (float32);
- sam_hf float32, and `precision="bf16"`;
- sam_hf float32 with an unmerged LoRA adapter on the mask decoder (`sam_hf.training.lora.apply_lora`, rank 8,
  non-zero B), the model a fine-tuning run hands back.

Prints the machine, each time (the median of `--repeats` `generate()` calls after one warm-up; the reference
runs once unless `--official-repeats` says otherwise), the ratios official / ours and LoRA / plain, and how
many of sam_hf's float32 masks are pixel-identical to the reference's (matched by prompt and scores;
`--box-nms-thresh 1.0` keeps every candidate, so all of them are compared). On a CPU without native bf16
(AVX2 only) bf16 is emulated and slower than float32; `--precisions fp32` skips that run there.

    python benchmarks/bench_amg_session.py
    python benchmarks/bench_amg_session.py --variant vit_t
    python benchmarks/bench_amg_session.py --points-per-side 32 --repeats 1
    python benchmarks/bench_amg_session.py --precisions fp32
"""

from __future__ import annotations

import argparse
import statistics
import time

from _variants import VARIANTS, machine, reference_and_ours


def _median_seconds(generate, image, repeats: int) -> tuple[float, list[dict]]:
    times, records = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        records = generate(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times), records


def _identical(reference: list[dict], ours: list[dict]) -> int:
    """How many reference masks have a pixel-identical mask of ours from the same prompt with close scores."""
    import numpy as np

    by_prompt: dict[tuple, list[dict]] = {}
    for record in ours:
        by_prompt.setdefault(tuple(np.round(record["point_coords"][0], 6)), []).append(record)
    count = 0
    for record in reference:
        candidates = by_prompt.get(tuple(np.round(record["point_coords"][0], 6)), [])
        count += any(
            abs(c["predicted_iou"] - record["predicted_iou"]) < 1e-3
            and np.array_equal(c["segmentation"], record["segmentation"])
            for c in candidates
        )
    return count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="vit_b", choices=list(VARIANTS))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3, help="timed generate() calls of each sam_hf run")
    parser.add_argument("--official-repeats", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data

    from sam_hf import SamAutomaticMaskGenerator
    from sam_hf.training.lora import apply_lora

    image = np.asarray(Image.fromarray(data.astronaut()).resize((512, 512)))
    settings = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": args.box_nms_thresh,
    }
    package, official, model = reference_and_ours(args.variant)
    print(machine(), flush=True)
    print(f"{VARIANTS[args.variant][1]} (seeded random weights), 512x512 astronaut, points_per_side="
          f"{args.points_per_side}, thresholds open, box NMS {args.box_nms_thresh}, one process; official: "
          f"{package.__name__}", flush=True)  # fmt: skip

    results = {}
    official_generator = package.SamAutomaticMaskGenerator(official, **settings)
    results["official"] = _median_seconds(official_generator.generate, image, args.official_repeats)
    print(
        f"  official fp32      {results['official'][0]:7.2f} s  {len(results['official'][1])} masks",
        flush=True,
    )
    del official_generator, official
    for precision in dict.fromkeys(["fp32", *args.precisions]):
        name = f"sam_hf {precision}"
        generator = SamAutomaticMaskGenerator(model, precision=precision, **settings)
        generator.generate(image)  # warm-up: first-call allocations and kernel choices
        results[name] = _median_seconds(generator.generate, image, args.repeats)
        print(f"  {name:<18} {results[name][0]:7.2f} s  {len(results[name][1])} masks", flush=True)
    adapted = apply_lora(model, r=8, init_lora_weights=False, verbose=False).eval()
    generator = SamAutomaticMaskGenerator(adapted, **settings)
    generator.generate(image)
    results["sam_hf fp32 + LoRA"] = _median_seconds(generator.generate, image, args.repeats)
    print(f"  sam_hf fp32 + LoRA {results['sam_hf fp32 + LoRA'][0]:7.2f} s  "
          f"{len(results['sam_hf fp32 + LoRA'][1])} masks", flush=True)  # fmt: skip

    reference = results["official"][0]
    for name in [f"sam_hf {precision}" for precision in dict.fromkeys(["fp32", *args.precisions])] + [
        "sam_hf fp32 + LoRA"
    ]:
        print(f"official / {name}: {reference / results[name][0]:.2f}x")
    print(f"LoRA / plain (fp32): {results['sam_hf fp32 + LoRA'][0] / results['sam_hf fp32'][0]:.2f}x")
    identical = _identical(results["official"][1], results["sam_hf fp32"][1])
    print(f"sam_hf fp32 masks pixel-identical to the official's: {identical} / {len(results['official'][1])}")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
