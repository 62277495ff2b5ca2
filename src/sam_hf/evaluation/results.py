"""The results of an evaluation: `eval_results.json`, its table, and the headline numbers per prompt.

Results (`eval_results.json`, `EVAL_RESULTS_NAME`):
    {"protocol": {...}, "dataset": str, "split": str | None, "num_images": int,
     "runs": {run_name: {"model": str, "eval_runtime_s": float,
                         "results": {prompt: {"mean_iou", "mean_dice", "num_objects", ...}}}}}
with run names "base" and "finetuned" for an adapter (the base is the adapter disabled), "model" otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .protocol import PROMPT_TYPES, EvaluationProtocol, evaluate_model

__all__ = [
    "EVAL_RESULTS_NAME",
    "NOT_MEASURED",
    "flat_metrics",
    "metric_label",
    "results_table",
    "timed_run",
    "write_eval_results",
]

EVAL_RESULTS_NAME = "eval_results.json"
NOT_MEASURED = "not measured"
_CLICKS_SHOWN = (1, 3, 5, 10, 20)
_LABELS = {"mean_iou": "mIoU", "mean_dice": "Dice"}


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """One prompt's headline numbers as `{key: value}` in table order.

    One-shot prompts: mean_iou, mean_dice. Interactive: miou@k for k in 1, 3, 5, 10, 20 and the last click,
    then noc@t (its mean_iou is miou@last, so it is not repeated).
    """
    curve = result.get("miou_per_click")
    if not curve:
        return {key: result[key] for key in _LABELS if key in result}
    shown = sorted({k for k in _CLICKS_SHOWN if k <= len(curve)} | {len(curve)})
    flat = {f"miou@{k}": curve[k - 1] for k in shown}
    flat.update({key: result[key] for key in sorted(result) if key.startswith("noc@")})
    return flat


def metric_label(key: str) -> str:
    """Human label of a `flat_metrics` key: "mIoU", "Dice", "mIoU@3 clicks", "NoC@90"."""
    if key.startswith("miou@"):
        clicks = int(key.split("@")[1])
        return f"mIoU@{clicks} click" + ("s" if clicks > 1 else "")
    return _LABELS.get(key) or key.replace("noc", "NoC")


def results_table(runs: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (prompt, metric, one value per run) of a results dict's `runs`.

    A number a run did not measure reads "not measured"; IoU/Dice have 4 decimals, NoC 2.
    """
    names = list(runs)
    prompts = [p for p in PROMPT_TYPES if any(p in run["results"] for run in runs.values())]
    rows = []
    for prompt in prompts:
        per_run = [flat_metrics(runs[name]["results"].get(prompt, {})) for name in names]
        keys = list(dict.fromkeys(key for flat in per_run for key in flat))
        objects = next(
            runs[n]["results"][prompt]["num_objects"] for n in names if prompt in runs[n]["results"]
        )
        for key in keys:
            fmt = "{:.2f}" if key.startswith("noc@") else "{:.4f}"
            values = [fmt.format(flat[key]) if key in flat else NOT_MEASURED for flat in per_run]
            rows.append([f"{prompt} ({objects} objects)", metric_label(key), *values])
    return ["prompt", "metric", *names], rows


def timed_run(
    source: str,
    model: torch.nn.Module,
    processor,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    protocol: EvaluationProtocol,
    num_samples: int | None = None,
) -> dict[str, Any]:
    """One entry of `eval_results.json`'s `runs`: `evaluate_model`'s results, the model's name, the time taken."""
    start = time.perf_counter()
    results = evaluate_model(model, processor, samples, protocol, num_samples=num_samples)
    return {"model": source, "eval_runtime_s": round(time.perf_counter() - start, 3), "results": results}


def write_eval_results(
    path: str | Path,
    protocol: EvaluationProtocol,
    dataset: str,
    split: str | None,
    num_images: int,
    runs: dict[str, Any],
) -> str:
    """Write `eval_results.json` (protocol, data, `runs` of `timed_run`) to `path`; return a report to print.

    The report is a title line (protocol, dataset, split, image count) and the aligned `results_table`.
    """
    output = {
        "protocol": protocol.to_dict(),
        "dataset": dataset,
        "split": split,
        "num_images": num_images,
        "runs": runs,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    header, rows = results_table(runs)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = f"{protocol.name} on {dataset}" + (f" [{split}]" if split else "") + f", {num_images} images"
    return "\n".join([title, *lines])
