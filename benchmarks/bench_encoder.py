"""Image encoding and one-prompt decoding: official `segment_anything` vs transformers `SamModel` vs `sam_hf`.

Same seeded random ViT-B weights in all three (loaded strictly; the positional terms randomised so the
relative-position path does real work), same 1024x1024 input (scikit-image's astronaut), same process.

Encoding: `image_encoder(pixel_values)` / `get_image_embeddings(pixel_values)`, median of `--repeats` timed
runs after one warm-up, in float32 and in bfloat16 (each peer under `torch.autocast`, their bf16 mode; ours
with the image encoder's weights in bf16, what `SamPredictor(model, encoder_dtype=torch.bfloat16)` does).
The bf16 embeddings are checked against our float32 ones through the same float32 decoder: full-size
binary masks for a grid of point prompts must agree on >= 99.5 % of pixels.

Decoding: one point prompt, multimask, decoder + upsampling to the original image size (the work a click
costs in an interactive tool): official `SamPredictor.predict`, transformers `SamModel(image_embeddings=...)`
+ `SamProcessor.post_process_masks`, ours `SamPredictor.predict`; median of `--decode-repeats` runs.

Ratios are peer / ours from the same invocation; the CPU may be shared, so compare ratios. On a CPU without
native bf16 (`torch.backends.cpu.get_cpu_capability()` below AVX512, e.g. AVX2) every bf16 product is emulated
and slower than float32; `--precisions fp32` skips the bf16 rows there.

    python benchmarks/bench_encoder.py [--repeats 3] [--decode-repeats 20] [--device cpu] [--precisions fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _median_seconds(fn, repeats: int, device: str) -> float:
    def timed() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up
    return statistics.median(timed() for _ in range(repeats))


def _build_models(device: str):
    from segment_anything import sam_model_registry
    from transformers import SamModel

    from sam_hf import SamHFModel
    from sam_hf.modeling.checkpoint_conversion import to_transformers_config, to_transformers_state_dict

    torch.manual_seed(0)
    official = sam_model_registry["vit_b"]().eval()
    with torch.no_grad():
        for name, parameter in official.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                parameter.normal_(std=0.02)
    state_dict = official.state_dict()
    ours = SamHFModel(_vit_b_config()).eval()
    ours.load_state_dict(state_dict, strict=True)
    theirs = SamModel(to_transformers_config(ours.config)).eval()
    missing, unexpected = theirs.load_state_dict(
        to_transformers_state_dict(state_dict, ours.config), strict=False
    )
    if unexpected or any("positional_embedding" not in key for key in missing):
        raise RuntimeError(f"transformers SamModel did not take the weights: {missing=} {unexpected=}")
    theirs.tie_weights()
    return official.to(device), theirs.to(device), ours.to(device)


def _vit_b_config():
    from sam_hf import SamHFConfig

    return SamHFConfig.from_preset("vit_b")


def _mask_agreement(ours, reference: torch.Tensor, candidate: torch.Tensor, original_size) -> float:
    """Fraction of full-size mask pixels on which two embeddings agree, through our float32 decoder."""
    from sam_hf import SamHFProcessor

    processor = SamHFProcessor.from_model_config(ours.config)
    height, width = original_size
    grid = np.stack(np.meshgrid(np.linspace(32, width - 32, 8), np.linspace(32, height - 32, 8)), -1).reshape(
        -1, 2
    )
    inputs = processor(
        images=np.zeros((height, width, 3), np.uint8),
        input_points=[[[point] for point in grid.tolist()]],
        input_labels=[[[1] for _ in grid]],
    )
    masks = []
    for embedding in (reference, candidate):
        with torch.inference_mode():
            output = ours(
                image_embeddings=embedding.float(),
                input_points=inputs["input_points"].to(embedding.device),
                input_labels=inputs["input_labels"].to(embedding.device),
            )
        masks.append(
            processor.post_process_masks(
                output.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
            )[0]
        )
    return (masks[0] == masks[1]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder runs per implementation")
    parser.add_argument("--decode-repeats", type=int, default=20, help="timed one-prompt decodes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    args = parser.parse_args()

    from segment_anything import SamPredictor as OfficialPredictor
    from skimage import data
    from transformers import SamImageProcessor, SamProcessor

    from sam_hf import SamHFProcessor, SamPredictor

    device = args.device
    official, theirs, ours = _build_models(device)
    image = data.astronaut()  # 512 x 512 x 3 uint8
    processor = SamHFProcessor.from_model_config(ours.config)
    pixel_values = processor(images=image)["pixel_values"].to(device)  # (1, 3, 1024, 1024)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)

    def encode(fn, bf16_autocast: bool = False):
        def run():
            with torch.inference_mode():
                if bf16_autocast:
                    with autocast:
                        return fn(pixel_values)
                return fn(pixel_values)

        return run

    print(
        f"ViT-B encoder, 1024x1024, device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    times = {}
    times["official fp32"] = _median_seconds(encode(official.image_encoder), args.repeats, device)
    times["transformers fp32"] = _median_seconds(encode(theirs.get_image_embeddings), args.repeats, device)
    times["sam_hf fp32"] = _median_seconds(encode(ours.get_image_embeddings), args.repeats, device)
    with torch.inference_mode():
        reference = ours.get_image_embeddings(pixel_values)
        official_embedding = official.image_encoder(pixel_values)
    if "bf16" in args.precisions:
        times["official bf16 autocast"] = _median_seconds(
            encode(official.image_encoder, True), args.repeats, device
        )
        times["transformers bf16 autocast"] = _median_seconds(
            encode(theirs.get_image_embeddings, True), args.repeats, device
        )
        ours.image_encoder.to(torch.bfloat16)
        times["sam_hf bf16"] = _median_seconds(encode(ours.get_image_embeddings), args.repeats, device)
        with torch.inference_mode():
            bf16_embedding = ours.get_image_embeddings(pixel_values)
        ours.image_encoder.float()

    for name, seconds in times.items():
        print(f"  encode {name:28s} {seconds:7.2f} s")
    fastest_fp32 = min(times["official fp32"], times["transformers fp32"])
    print(f"  ratio fp32: fastest peer / sam_hf = {fastest_fp32 / times['sam_hf fp32']:.2f}x")
    print(
        f"  sam_hf fp32 vs official fp32 embeddings: max abs diff {(reference - official_embedding).abs().max():.2e}"
    )
    if "bf16" in args.precisions:
        fastest_bf16 = min(times["official bf16 autocast"], times["transformers bf16 autocast"])
        print(f"  ratio bf16: fastest peer / sam_hf = {fastest_bf16 / times['sam_hf bf16']:.2f}x")
        print(f"  ratio: sam_hf bf16 vs official fp32 = {times['official fp32'] / times['sam_hf bf16']:.2f}x")
        agreement = _mask_agreement(ours, reference, bf16_embedding, image.shape[:2])
        print(
            f"  bf16 vs fp32 full-size masks (64 point prompts x 3 masks): {100 * agreement:.3f} % pixels agree"
        )

    # One-prompt decode + post-processing to the original size.
    point, label = np.array([[200, 150]]), np.array([1])
    official_predictor = OfficialPredictor(official)
    official_predictor.set_image(image)
    our_predictor = SamPredictor(ours)
    our_predictor.set_image(image)
    their_processor = SamProcessor(image_processor=SamImageProcessor())
    their_inputs = their_processor(images=image, input_points=[[point.tolist()]], return_tensors="pt")
    with torch.inference_mode():
        their_embedding = theirs.get_image_embeddings(their_inputs["pixel_values"].to(device))

    def their_decode():
        with torch.inference_mode():
            output = theirs(
                image_embeddings=their_embedding,
                input_points=their_inputs["input_points"].to(device),
                multimask_output=True,
            )
            return their_processor.image_processor.post_process_masks(
                output.pred_masks.cpu(), their_inputs["original_sizes"], their_inputs["reshaped_input_sizes"]
            )

    decode = {
        "official": _median_seconds(
            lambda: official_predictor.predict(point, label), args.decode_repeats, device
        ),
        "transformers": _median_seconds(their_decode, args.decode_repeats, device),
        "sam_hf": _median_seconds(lambda: our_predictor.predict(point, label), args.decode_repeats, device),
    }
    for name, seconds in decode.items():
        print(f"  decode 1 point + post-process {name:14s} {1000 * seconds:7.1f} ms")
    fastest = min(decode["official"], decode["transformers"])
    print(f"  ratio decode: fastest peer / sam_hf = {fastest / decode['sam_hf']:.2f}x")


if __name__ == "__main__":
    main()
