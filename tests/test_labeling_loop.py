"""Tests for the simulated annotator and the measured data-engine loop (sam_hf.labeling.simulated)."""

import json

import datasets
import numpy as np
import pytest

from sam_hf.data.rle import rle_to_mask
from sam_hf.data.synthetic import generate_sample
from sam_hf.labeling.simulated import ObjectLog, run_label_loop, summarize


def test_summary_follows_the_noc_convention():
    logs = [
        ObjectLog(0, 0, 0, [0.5, 0.86, 0.95], 3, 0, 0.95, True, 1.0),  # 85 at click 2, 90 at click 3
        ObjectLog(0, 1, 0, [0.92], 1, 2, 0.97, True, 1.0),
        ObjectLog(1, 0, 0, [0.1, 0.2, 0.3, 0.4], 4, 6, 0.96, True, 1.0),  # never: counts max_clicks
    ]
    summary = summarize(logs, max_clicks=4)
    assert summary["objects"] == 3
    assert summary["noc@85"] == pytest.approx((2 + 1 + 4) / 3)
    assert summary["noc@90"] == pytest.approx((3 + 1 + 4) / 3)
    assert summary["nof@85"] == summary["nof@90"] == 1
    assert summary["clicks_per_object"] == pytest.approx(8 / 3)
    assert summary["miou@1"] == pytest.approx((0.5 + 0.92 + 0.1) / 3)
    assert summary["strokes_per_object"] == pytest.approx(8 / 3)
    assert summary["label_miou"] == pytest.approx((0.95 + 0.97 + 0.96) / 3)


def test_label_retrain_label_loop_records_consistent_stats(tmp_path):
    max_clicks, max_strokes = 3, 8
    result = run_label_loop(
        "sam-hf-tiny",
        tmp_path,
        num_images=1,
        num_heldout=1,
        image_size=64,
        max_clicks=max_clicks,
        max_strokes=max_strokes,
        max_steps=2,
        batch_size=2,
    )
    logs = result["logs"]
    for phase in ("labelled", "heldout_retrained", "heldout_base"):
        summary = result[phase]
        assert summary["objects"] == len(logs[phase]) > 0
        for log in logs[phase]:
            assert log["clicks"] == len(log["iou_per_click"]) <= max_clicks
            assert log["clicks"] == max_clicks or log["iou_per_click"][-1] >= 0.9  # stops only when done
            assert log["strokes"] <= max_strokes
            assert log["strokes"] == max_strokes or log["label_iou"] >= 0.95 or not log["accepted"]
            assert log["strokes"] == 0 or log["label_iou"] > log["iou_per_click"][-1]  # the brush helped
    # what the session stored is the annotator's final mask: its IoU with the ground truth is the logged one
    ground_truth = generate_sample(0, "train", "cells", 64).masks
    record = json.loads((tmp_path / "labels" / "labeling" / "records" / f"{0:08d}.json").read_text())
    accepted = [o for o in logs["labelled"] if o["accepted"]]
    assert len(record["annotations"]) == len(accepted)
    for annotation, log in zip(record["annotations"], accepted, strict=True):
        mask, gt = rle_to_mask(annotation["segmentation"]), ground_truth[log["object_index"]]
        assert (mask & gt).sum() / (mask | gt).sum() == pytest.approx(log["label_iou"])
        assert annotation["num_strokes"] == log["strokes"]
        assert 1 <= summary["noc@85"] <= summary["noc@90"] <= max_clicks
    # the same annotator on the same held-out images: the same objects, whatever the model
    assert [(o["image_index"], o["object_index"]) for o in logs["heldout_base"]] == [
        (o["image_index"], o["object_index"]) for o in logs["heldout_retrained"]
    ]
    assert {o["round"] for o in logs["labelled"]} == {0}
    assert {o["round"] for o in logs["heldout_retrained"]} == {1}

    stats = result["round_stats"]  # what the session stored, against what the annotator did
    assert [s["round"] for s in stats] == [0, 1]
    for entry, phase in zip(stats, ("labelled", "heldout_retrained"), strict=True):
        accepted = [o for o in logs[phase] if o["accepted"]]
        assert entry["objects"] == entry["objects_per_stage"]["manual"] == len(accepted)
        assert entry["clicks_per_object"] == pytest.approx(np.mean([o["clicks"] for o in accepted]))
    assert result["retrain"]["num_masks"] == stats[0]["objects"]
    labelled = datasets.load_from_disk(str(tmp_path / "labels"))
    assert sum(len(r["masks"]) for split in labelled.values() for r in split) == sum(
        s["objects"] for s in stats
    )
