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

import numpy as np
import torch

from sam_hf import SamHFConfig, SamHFModel, SamHFProcessor
from sam_hf.export import export_onnx


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, onnxruntime's first-run planning
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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

    torch_encoder_s = _median_seconds(torch_encoder, repeats)
    torch_decoder_s = _median_seconds(torch_decoder, 5 * repeats)
    print(f"{name}: PyTorch encoder {torch_encoder_s * 1e3:.1f} ms, decoder {torch_decoder_s * 1e3:.2f} ms")
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
    for quantize in (None, "int8"):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            result = export_onnx(model, folder, quantize=quantize)
            export_s = time.perf_counter() - start
            encoder = ort.InferenceSession(str(result.encoder), options, providers=["CPUExecutionProvider"])
            decoder = ort.InferenceSession(str(result.decoder), options, providers=["CPUExecutionProvider"])
            encoder_s = _median_seconds(
                lambda e=encoder: e.run(None, {"pixel_values": pixel_values.numpy()}), repeats
            )
            decoder_s = _median_seconds(lambda d=decoder: d.run(None, feed), 5 * repeats)
        kind = quantize or "fp32"
        print(
            f"{name}: onnxruntime {kind} (export {export_s:.0f} s): encoder {encoder_s * 1e3:.1f} ms "
            f"({torch_encoder_s / encoder_s:.2f}x PyTorch's speed), decoder {decoder_s * 1e3:.2f} ms "
            f"({torch_decoder_s / decoder_s:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="sam-hf-tiny,vit_b", help="comma-separated: shipped names or vit_b"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="threads for both runtimes"
    )
    parser.add_argument("--repeats", type=int, default=3, help="encoder repeats (decoder: 5x as many)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}; onnxruntime CPUExecutionProvider; torch {torch.__version__}")
    for name in args.models.split(","):
        bench(name, args.threads, args.repeats)


if __name__ == "__main__":
    main()
