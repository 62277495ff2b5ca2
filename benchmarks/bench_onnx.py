"""onnxruntime vs PyTorch on this CPU: the exported image encoder and prompt decoder against the model they came
from, median of repeats after one warm-up run, same thread count for both.

    python benchmarks/bench_onnx.py [--models sam-hf-tiny,vit_b] [--threads N] [--repeats N]

Encoder: `pixel_values` -> `image_embeddings` (`model.get_image_embeddings` vs `image_encoder.onnx`).
Decoder: one click (the point and the official padding point) -> the best of the multimask outputs at the
original image size (`model(..., multimask_output=True)` + `post_process_masks` of the best mask vs
`mask_decoder.onnx`, whose single-mask export picks and upscales that mask). `vit_b` is a full-size ViT-B with
seeded random weights (timings do not depend on the values). Float32 and int8 files are both timed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from sam_hf import SamHFConfig, SamHFModel, SamHFProcessor
from sam_hf.export import export_onnx


def _median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function; one warm-up call each (allocations, onnxruntime's first-run planning),
    then the functions take turns, so a change of load on a shared machine reaches all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _model(name: str) -> SamHFModel:
    if name == "vit_b":
        torch.manual_seed(0)
        return SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    return SamHFModel.from_pretrained(name).eval()


def bench(name: str, threads: int, repeats: int) -> None:
    import onnxruntime as ort
    from skimage import data

    model = _model(name)
    processor = SamHFProcessor.from_model_config(model.config)
    image = data.coffee()
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    point = processor.transform_coords(np.array([[300.0, 200.0]]), image.shape[:2]).astype(np.float32)
    resized = processor.get_preprocess_shape(*image.shape[:2])

    with torch.inference_mode():
        embeddings = model.get_image_embeddings(pixel_values)

    def torch_encoder():
        with torch.inference_mode():
            model.get_image_embeddings(pixel_values)

    def torch_decoder():
        with torch.inference_mode():
            out = model(
                image_embeddings=embeddings,
                input_points=torch.from_numpy(point)[None, None],
                input_labels=torch.ones(1, 1, 1, dtype=torch.long),
            )
            best = out.iou_scores[0, 0].argmax()
            processor.post_process_masks(out.pred_masks[:, :, best : best + 1], [image.shape[:2]], [resized])

    feed = {
        "image_embeddings": embeddings.numpy(),
        "point_coords": np.concatenate([point, [[0.0, 0.0]]])[None].astype(np.float32),
        "point_labels": np.array([[1.0, -1.0]], np.float32),
        "mask_input": np.zeros((1, 1, model.config.mask_size, model.config.mask_size), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(image.shape[:2], np.float32),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    encoders, decoders = {"PyTorch": torch_encoder}, {"PyTorch": torch_decoder}
    with tempfile.TemporaryDirectory() as folder:
        for kind, quantize in (("onnxruntime fp32", None), ("onnxruntime int8", "int8")):
            start = time.perf_counter()
            result = export_onnx(model, f"{folder}/{kind[-4:]}", quantize=quantize)
            print(f"{name}: {kind} export {time.perf_counter() - start:.0f} s", flush=True)
            encoder = ort.InferenceSession(str(result.encoder), options, providers=["CPUExecutionProvider"])
            decoder = ort.InferenceSession(str(result.decoder), options, providers=["CPUExecutionProvider"])
            encoders[kind] = lambda e=encoder: e.run(None, {"pixel_values": pixel_values.numpy()})
            decoders[kind] = lambda d=decoder: d.run(None, feed)
        for stage, fns, count in (("encoder", encoders, repeats), ("decoder", decoders, 5 * repeats)):
            seconds = _median_seconds(fns, count)
            base = seconds["PyTorch"]
            text = ", ".join(
                f"{kind} {value * 1e3:.1f} ms ({base / value:.2f}x PyTorch's speed)"
                for kind, value in seconds.items()
                if kind != "PyTorch"
            )
            print(f"{name} {stage} (median of {count}): PyTorch {base * 1e3:.1f} ms, {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="sam-hf-tiny,vit_b", help="comma-separated: shipped names or vit_b"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for both runtimes (default 1: on a shared CPU, PyTorch with more OpenMP threads than "
        "idle cores slows down many times over)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="encoder repeats (decoder: 5x as many)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}; onnxruntime CPUExecutionProvider; torch {torch.__version__}")
    for name in args.models.split(","):
        bench(name, args.threads, args.repeats)


if __name__ == "__main__":
    main()
