"""Tests for the labelling state machine (sam_hf.labeling.session) without a browser, on real photos."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf.cli import main
from sam_hf.data.rle import rle_to_mask
from sam_hf.data.synthetic import generate_sample
from sam_hf.labeling import DatasetLockedError, LabelSession

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


@pytest.fixture
def photo_folder(tmp_path, photos):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(photos[name]).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def session(photo_folder, tmp_path):
    with LabelSession("sam-hf-tiny", photo_folder, tmp_path / "out") as session:
        yield session


def _record(out, index):
    return json.loads((out / "labeling" / "records" / f"{index:08d}.json").read_text())


def test_clicks_give_masks_and_feed_the_previous_logits_back(session, monkeypatch):
    calls = []
    predict = session.predictor.predict
    monkeypatch.setattr(
        session.predictor, "predict", lambda **kwargs: calls.append(kwargs) or predict(**kwargs)
    )
    assert session.image_name == "astronaut.png" and session.image.shape == (512, 512, 3)
    first = session.add_click(250, 120)
    assert first.masks.shape == (3, 512, 512) and first.masks.dtype == bool
    assert first.iou_predictions.shape == (3,) and first.selected == int(np.argmax(first.iou_predictions))
    assert calls[0]["mask_input"] is None and calls[0]["multimask_output"]
    # what the session shows is the predictor's answer to the same prompts
    logits, _, low_res = predict(point_coords=np.array([[250, 120]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(first.masks, logits)
    np.testing.assert_allclose(first.low_res_logits, low_res, atol=1e-5)

    session.select_candidate(2)
    second = session.add_click(300, 300, positive=False)
    assert second.masks.shape == (1, 512, 512) and second.num_clicks == 2
    np.testing.assert_array_equal(calls[1]["mask_input"], first.low_res_logits[[2]])
    np.testing.assert_array_equal(calls[1]["point_labels"], [1, 0])
    assert not calls[1]["multimask_output"]
    third = session.add_click(260, 140)
    np.testing.assert_array_equal(calls[2]["mask_input"], second.low_res_logits[[0]])
    assert third.point_coords.tolist() == [[250, 120], [300, 300], [260, 140]]

    boxed = session.set_box(400, 80, 150, 300)  # corners in any order
    assert boxed.box.tolist() == [150, 80, 400, 300] and boxed.num_clicks == 4
    np.testing.assert_array_equal(calls[3]["box"], [150, 80, 400, 300])

    with pytest.raises(ValueError, match="must lie in the image"):
        session.add_click(600, 10)
    with pytest.raises(IndexError, match=r"\[0, 1\)"):
        session.select_candidate(1)
    session.clear_prompts()
    session.set_box(150, 80, 400, 300)  # a box alone: one mask, stored with the box centre as its point
    if session.proposal.mask.any():
        assert session.accept().num_clicks == 1
        assert _record(session.out, 0)["annotations"][-1]["point_coords"] == [275.0, 190.0]


def test_undo_steps_back_and_accept_writes_at_once(session, tmp_path):
    with pytest.raises(RuntimeError, match="no mask yet"):
        session.accept()
    first = session.add_click(250, 120)
    session.add_click(300, 300, positive=False)
    assert session.undo() is first
    assert session.undo() is None and session.proposal is None
    assert session.undo() is None

    proposal = session.add_click(250, 120)
    obj = session.accept(class_name="person")
    stored = _record(tmp_path / "out", 0)["annotations"]  # on disk before accept returned
    assert len(stored) == 1 and stored[0]["id"] == obj.id == 1
    np.testing.assert_array_equal(rle_to_mask(stored[0]["segmentation"]), proposal.mask)
    assert stored[0]["stage"] == "manual" and stored[0]["num_clicks"] == 1
    assert stored[0]["category"] == "person" and stored[0]["model_id"] == "sam-hf-tiny"
    assert stored[0]["model_revision"].startswith("sam_hf-") and stored[0]["seconds"] >= 0
    assert stored[0]["predicted_iou"] == pytest.approx(float(proposal.iou_predictions[proposal.selected]))
    assert session.proposal is None

    session.add_click(100, 400)
    second = session.accept()
    assert [o.id for o in session.objects] == [1, 2]
    session.delete_object(1)
    assert [a["id"] for a in _record(tmp_path / "out", 0)["annotations"]] == [second.id]
    with pytest.raises(KeyError, match="object_id"):
        session.delete_object(1)


def test_a_tiny_vit_model_folder_labels_under_a_digest_of_its_weights(photo_folder, tmp_path):
    """A local MobileSAM-style (TinyViT) model: its revision digests every tensor, 0-dim buffers included."""
    from sam_hf import SamHFConfig, SamHFModel

    SamHFModel(SamHFConfig.from_preset("tiny_vit_t")).save_pretrained(tmp_path / "tiny_vit")
    with LabelSession(str(tmp_path / "tiny_vit"), photo_folder, tmp_path / "out") as session:
        session.add_click(250, 120)
        session.accept()
    stored = _record(tmp_path / "out", 0)["annotations"]
    assert stored[0]["model_revision"].startswith("sha256:") and len(stored[0]["model_revision"]) == 19


def test_brush_and_eraser_strokes_stay_through_clicks_undo_and_are_stored(session, tmp_path):
    with pytest.raises(RuntimeError, match="no mask yet"):
        session.brush(100, 100, 10)
    clicked = session.add_click(250, 120)
    ys, xs = np.ogrid[:512, :512]
    disc = (xs - 60) ** 2 + (ys - 450) ** 2 <= 20**2
    painted = session.brush(60, 450, 20)
    assert painted.num_strokes == 1 and painted.num_clicks == 1
    np.testing.assert_array_equal(painted.mask, clicked.mask | disc)
    np.testing.assert_array_equal(painted.masks, clicked.masks)  # the model's candidates are unchanged
    square = np.zeros((512, 512), bool)
    square[100:140, 230:270] = True
    erased = session.paint(square, erase=True)
    assert erased.num_strokes == 2 and not erased.mask[square].any() and erased.mask[disc].all()
    # a later click: the model's new mask, with both strokes still over it
    refined = session.add_click(300, 200)
    assert refined.num_strokes == 2 and refined.num_clicks == 2
    np.testing.assert_array_equal(refined.mask, (refined.masks[0] | disc) & ~square)
    session.undo()
    assert session.proposal is erased
    session.undo()
    assert session.proposal is painted
    with pytest.raises(ValueError, match="bool array of the image's shape"):
        session.paint(np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="radius be > 0"):
        session.brush(10, 10, 0)
    obj = session.accept()
    assert obj.num_strokes == 1 and obj.num_clicks == 1
    stored = _record(tmp_path / "out", 0)["annotations"][-1]
    assert stored["num_strokes"] == 1
    np.testing.assert_array_equal(rle_to_mask(stored["segmentation"]), painted.mask)
    assert session.round_stats()[0]["strokes_per_object"] == 1.0
    session.finish_image()
    dataset = session.store.materialize()
    assert [row["num_strokes"] for split in dataset.values() for row in split if row["masks"]] == [[1]]


def test_semi_automatic_prefill_and_clicks_on_what_is_not_covered(session, tmp_path, monkeypatch):
    session.add_click(250, 120)
    accepted = session.accept().mask
    encoded = []
    encode = session.model.get_image_embeddings
    monkeypatch.setattr(
        session.model, "get_image_embeddings", lambda *a, **k: encoded.append(1) or encode(*a, **k)
    )
    candidates = session.prefill(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4)
    assert session.mode == "semi" and candidates
    assert not encoded  # the generator decodes from the session's embedding of the image
    for candidate in candidates:
        assert not (candidate.mask & accepted).any()
    kept = candidates[0].mask
    auto = session.accept_prefilled(0)
    assert auto.stage == "auto" and auto.num_clicks == 0
    np.testing.assert_array_equal(auto.mask, kept)
    pending = len(session.prefilled)
    if pending:
        session.reject_prefilled(0)
        assert len(session.prefilled) == pending - 1
    # what is covered follows every accept and reject (it is kept between clicks)
    np.testing.assert_array_equal(
        session.covered(), np.logical_or.reduce([accepted, kept, *(c.mask for c in session.prefilled)])
    )
    assert not session.covered().flags.writeable
    proposal = session.add_click(250, 120)  # on the accepted object: the mask keeps out of it
    assert not (proposal.masks & session.covered()).any()
    ys, xs = np.nonzero(~session.covered())
    session.undo()
    session.add_click(float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    if session.proposal.mask.any():
        assert session.accept().stage == "semi"
    stages = [a["stage"] for a in _record(tmp_path / "out", 0)["annotations"]]
    assert stages[:2] == ["manual", "auto"]
    with pytest.raises(IndexError, match="pre-filled"):
        session.accept_prefilled(len(session.prefilled))
    session.mode = "manual"
    with pytest.raises(ValueError, match="mode must be one of"):
        session.mode = "auto"


def test_resume_after_a_crash_and_one_writer(photo_folder, tmp_path):
    out = tmp_path / "out"
    crash = textwrap.dedent(
        f"""
        import os
        from sam_hf.labeling import LabelSession
        s = LabelSession("sam-hf-tiny", {str(photo_folder)!r}, {str(out)!r})
        s.add_click(250, 120); s.accept(); s.finish_image(); s.next_image()
        s.add_click(200, 200); s.accept()
        s.add_click(50, 50)  # the mask in progress when the process dies
        os._exit(3)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", crash], env={**os.environ, "PYTHONPATH": SRC})
    assert process.wait() == 3
    assert json.loads((out / "labeling" / "lock.json").read_text())["pid"] == process.pid  # left behind

    session = LabelSession("sam-hf-tiny", photo_folder, out)  # the dead process's lock is taken over
    try:
        assert session.image_index == session.first_unfinished() == 1
        assert len(session.objects) == 1 and session.proposal is None
        with pytest.raises(DatasetLockedError, match=f"process {os.getpid()}"):
            LabelSession("sam-hf-tiny", photo_folder, out)
        session.go_to(0)
        assert len(session.objects) == 1
    finally:
        session.close()
    rows = [row for split in datasets.load_from_disk(str(out)).values() for row in split]
    assert sorted((r["file_name"], len(r["masks"])) for r in rows) == [
        ("astronaut.png", 1),
        ("chelsea.png", 1),
    ]
    LabelSession("sam-hf-tiny", photo_folder, out).close()  # closed: free again


def test_export_is_read_by_finetune_and_evaluate(session, tmp_path):
    for index, (x, y) in enumerate([(250, 120), (200, 200), (300, 250)]):
        session.go_to(index)
        session.add_click(x, y)
        session.accept(class_name="thing")
        session.finish_image()
    out = session.export()
    dataset = datasets.load_from_disk(str(out))
    assert set(dataset) == {"train", "test"}
    rows = [row for split in dataset.values() for row in split]
    assert sorted(r["file_name"] for r in rows) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert all(r["stage"] == ["manual"] and r["category"] == ["thing"] for r in rows)
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 3
    assert {a["model_id"] for a in coco["annotations"]} == {"sam-hf-tiny"}
    assert main(["finetune", "--model", "sam-hf-tiny", "--dataset", str(out), "--max-steps", "1",
                 "--output-dir", str(tmp_path / "ft")]) == 0  # fmt: skip
    assert (tmp_path / "ft" / "eval_results.json").exists()  # measured on the exported test split
    assert main(["evaluate", "--model", str(tmp_path / "ft"), "--dataset", str(out), "--prompt", "point",
                 "--output", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval.json").read_text())["split"] == "test"


def test_export_pushes_the_dataset_and_a_card_of_its_provenance(session, monkeypatch):
    """`export(push_to_hub=...)`, what the page's Export button and the end of `--retrain` call, uploads the
    dataset it wrote and a card counting the masks per stage and model. The two Hub uploads are recorded here,
    not made (no network)."""
    import huggingface_hub

    pushed = {}

    def record(key):
        return lambda self, repo_id, **kwargs: pushed.update({key: (self, repo_id, kwargs)})

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", record("dataset"))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub", record("card"))
    session.add_click(250, 120)
    session.accept()
    session.prefill(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=4)
    session.accept_prefilled(0)
    session.finish_image()
    out = session.export(push_to_hub="user/photos", private=True)

    dataset, repo, kwargs = pushed["dataset"]
    assert repo == "user/photos" and kwargs == {"private": True}
    written = datasets.load_from_disk(str(out))
    assert {name: split["file_name"] for name, split in dataset.items()} == {
        name: split["file_name"] for name, split in written.items()
    }
    card, card_repo, card_kwargs = pushed["card"]
    assert card_repo == "user/photos" and card_kwargs == {"repo_type": "dataset"}
    assert "| manual | 1 |" in card.text and "| auto | 1 |" in card.text and "| semi | 0 |" in card.text
    assert "`sam-hf-tiny, " in card.text and "2 masks on 1 images" in card.text


def test_an_hq_model_labels_with_clicks_box_prefill_and_a_retraining_swap(photo_folder, tmp_path):
    """SAM-HQ (one mask per prompt, the encoder's early feature cached with the embedding): clicks and a box
    give its mask, the generator pre-fills from the session's features, a LoRA round swaps in an HQ model."""
    from sam_hf import SamHFConfig, SamHFModel

    torch.manual_seed(0)
    SamHFModel(SamHFConfig.from_preset("tiny_hq")).save_pretrained(tmp_path / "hq")
    with LabelSession(str(tmp_path / "hq"), photo_folder, tmp_path / "out") as session:
        assert set(session.predictor.image_features) == {"image_embeddings", "intermediate_embeddings"}
        first = session.add_click(250, 120)
        assert first.masks.shape == (1, *session.image.shape[:2])
        second = session.add_click(100, 100, positive=False)
        assert not np.array_equal(first.low_res_logits, second.low_res_logits)
        session.accept()
        assert session.set_box(50, 60, 300, 400).masks.shape == (1, *session.image.shape[:2])
        session.clear_prompts()
        assert session.prefill(
            pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=2, max_overlap=1.0
        )
        session.accept_prefilled(0)
        before = session.add_click(400, 300).low_res_logits
        job = session.start_retrain(max_steps=1, batch_size=1, lora_r=2, learning_rate=0.05)
        assert job.wait(timeout=300) and job.error is None, job.message
        assert session.poll_retrain()
        assert session.model.config.mask_decoder_config.decoder_type == "hq"
        assert not np.allclose(before, session.proposal.low_res_logits)  # replayed with the new model
        session.brush(400, 300, 10)  # random weights may predict nothing there: a stroke makes it an object
        session.accept()
        assert [s["round"] for s in session.round_stats()] == [0, 1]


def test_retrain_swaps_in_a_model_trained_on_the_labels(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    samples = [generate_sample(i, "train", "cells", 128) for i in range(3)]
    for i, sample in enumerate(samples):
        Image.fromarray(sample.image).save(folder / f"{i}.png")
    with LabelSession("sam-hf-tiny", folder, tmp_path / "out") as session:
        with pytest.raises(ValueError, match="no mask is accepted yet"):
            session.start_retrain()
        for i, sample in enumerate(samples):
            session.go_to(i)
            for mask in sample.masks[:3]:
                ys, xs = np.nonzero(mask)
                session.add_click(float(xs.mean()), float(ys.mean()))
                if session.proposal.mask.any():
                    session.accept()
            session.finish_image()
        session.go_to(0)
        before = session.add_click(40, 40).low_res_logits
        stroked = session.brush(10, 10, 4)
        job = session.start_retrain(max_steps=3, batch_size=2, learning_rate=1e-3)
        with pytest.raises(RuntimeError, match="already running"):
            session.start_retrain()
        assert job.wait(timeout=300) and job.error is None, job.message
        assert job.progress == 1.0 and "round 1 ready" in job.message
        assert session.poll_retrain() and not session.poll_retrain()
        after = session.proposal.low_res_logits  # the click in progress, replayed with the new model
        assert not np.allclose(before, after)
        assert session.proposal.num_strokes == 1 and session.proposal.mask[10, 10]  # the stroke too
        np.testing.assert_array_equal(session.proposal.painted, stroked.painted)
        assert session.model_id == str(tmp_path / "out" / "rounds" / "1")
        # the round fine-tunes the whole decoder by default: a full model, no adapter
        assert (tmp_path / "out" / "rounds" / "1" / "model.safetensors").exists()
        session.accept()
        stats = session.round_stats()
    assert [s["round"] for s in stats] == [0, 1]
    assert stats[0]["model_id"] == "sam-hf-tiny" and stats[1]["objects"] == 1
    assert stats[0]["objects"] == job.num_masks
    assert stats[0]["clicks_per_object"] == 1.0


def test_a_loaded_or_peft_wrapped_model_labels_as_its_name_does(session, photo_folder, tmp_path):
    """The session takes a loaded model (its processor from its config) and a PEFT-wrapped one, as the
    predictor does; the first click gives the same masks as the model loaded by name."""
    import torch

    from sam_hf import SamHFModel
    from sam_hf.training.lora import apply_lora

    expected = session.add_click(250, 200)
    model = SamHFModel.from_pretrained("sam-hf-tiny")
    with LabelSession(model, photo_folder, tmp_path / "loaded") as loaded:
        proposal = loaded.add_click(250, 200)
        np.testing.assert_array_equal(proposal.masks, expected.masks)
        np.testing.assert_allclose(proposal.iou_predictions, expected.iou_predictions, atol=1e-6)
    peft_model = apply_lora(SamHFModel.from_pretrained("sam-hf-tiny"))
    with torch.no_grad():  # a non-zero adapter: the session must run through it
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    with LabelSession(peft_model, photo_folder, tmp_path / "peft") as adapted:
        changed = adapted.add_click(250, 200)
        assert not np.allclose(changed.iou_predictions, expected.iou_predictions, atol=1e-3)
    with pytest.raises(TypeError, match="a loaded model, or a \\(model, processor\\) pair, got int"):
        LabelSession(3, photo_folder, tmp_path / "bad")
