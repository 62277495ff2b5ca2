"""Image encoding per SAM family member against its reference package: SAM ViT-B vs `segment_anything`,
MobileSAM (TinyViT) vs `mobile_sam`.

Same seeded random weights in both (the reference's registry, loaded strictly into ours; see `_variants.py`),
scikit-image's astronaut through our processor to a 1024x1024 input, one process. Timed: the image encoder
alone, median of `--repeats` runs after one warm-up, in float32 and in bfloat16 (the reference under
`torch.autocast`, its bf16 mode; ours on the bf16 copy of the encoder that `SamPredictor(model,
encoder_dtype=torch.bfloat16)` and `SamAutomaticMaskGenerator(precision="bf16")` run). Printed: each time,
the ratios reference / ours, and the largest difference between the float32 embeddings.
`bench_encoder.py` has ViT-B against transformers' `SamModel` too, and the bf16 masks' agreement.

On a CPU without native bf16 (AVX2 only) bf16 is emulated and slower than float32; `--precisions fp32`
skips it there.

    python benchmarks/bench_encoder_variants.py                       # vit_b and vit_t
    python benchmarks/bench_encoder_variants.py --variants vit_t --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from _variants import VARIANTS, machine, reference_and_ours


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _encode(fn, inputs, autocast: bool = False):
    import torch

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return fn(inputs)

    return run


def _compare(variant: str, repeats: int, precisions: list[str]) -> None:
    import torch
    from skimage import data

    from sam_hf import SamHFProcessor

    package, reference, ours = reference_and_ours(variant)
    name = package.__name__
    pixel_values = SamHFProcessor.from_model_config(ours.config)(images=data.astronaut())["pixel_values"]
    print(f"{VARIANTS[variant][1]} encoder, 1024x1024 astronaut, seeded random weights", flush=True)
    runs = {}
    if "fp32" in precisions:
        runs[f"{name} fp32"] = _encode(reference.image_encoder, pixel_values)
        runs["sam_hf fp32"] = _encode(ours.image_encoder, pixel_values)
    if "bf16" in precisions:
        runs[f"{name} bf16 autocast"] = _encode(reference.image_encoder, pixel_values, autocast=True)
        encoder = copy.deepcopy(ours.image_encoder).to(torch.bfloat16)
        runs["sam_hf bf16"] = _encode(encoder, pixel_values.to(torch.bfloat16))
    times = {}
    for label, run in runs.items():
        times[label] = _median_seconds(run, repeats)
        print(f"  {label:<24} {times[label]:7.3f} s", flush=True)
    for precision, peer in (("fp32", f"{name} fp32"), ("bf16", f"{name} bf16 autocast")):
        if precision in precisions:
            print(f"  {peer} / sam_hf {precision}: {times[peer] / times[f'sam_hf {precision}']:.2f}x")
    with torch.inference_mode():
        expected = reference.image_encoder(pixel_values)
        if isinstance(expected, tuple):  # segment_anything_hq's encoders also return their early features
            expected = expected[0]
        difference = (expected - ours.image_encoder(pixel_values)).abs().max()
    print(f"  fp32 embeddings, largest difference to {name}: {difference:.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    args = parser.parse_args()
    print(machine(), flush=True)
    for variant in args.variants:
        _compare(variant, args.repeats, args.precisions)
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
