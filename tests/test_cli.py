"""`sam-hf` command line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from sam_hf import cli
from sam_hf.cli import main


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path):
    path = tmp_path / "tiny"
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture
def image_file(photos, tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)  # (300, 451)
    return path


def test_segment_writes_masks_overlay_and_scores(tiny_model_dir, image_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "segment",
        str(image_file),
        "--model",
        str(tiny_model_dir),
        "--point",
        "120,80",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["multimask_output"] is True  # a single point: three candidate masks
    assert len(report["scores"]) == 3 and all(isinstance(s, float) for s in report["scores"])
    assert report["masks"] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    assert report["best"] == int(np.argmax(report["scores"]))
    assert report["points"] == [{"x": 120.0, "y": 80.0, "label": 1}]
    for name in report["masks"]:
        mask = Image.open(out / name)
        assert mask.mode == "L" and mask.size == (451, 300)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    overlay = Image.open(out / "overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (451, 300)
    assert np.asarray(overlay)[80, 120].tolist() == [0, 200, 0]  # the foreground point is drawn
    assert "best mask" in capsys.readouterr().out


def test_segment_with_box_and_points_gives_one_mask(tiny_model_dir, image_file, tmp_path):
    out = tmp_path / "out"
    argv = [
        "segment", str(image_file), "--model", str(tiny_model_dir), "--out", str(out),
        "--point", "120,80", "--point", "200,90:0", "--box", "50,40,300,250",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["multimask_output"] is False and report["masks"] == ["mask_0.png"]
    assert report["box"] == [50.0, 40.0, 300.0, 250.0]
    assert [p["label"] for p in report["points"]] == [1, 0]
    assert main(argv + ["--multimask"]) == 0
    assert len(json.loads((out / "scores.json").read_text())["scores"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "120"], "--point expects X,Y or X,Y:LABEL"),
        (["--point", "a,b"], "--point expects X,Y or X,Y:LABEL"),
        (["--point", "1,2:5"], "--point label must be 1 .* or 0"),
        (["--box", "1,2,3"], "--box expects X0,Y0,X1,Y1"),
        (["--box", "10,2,3,4"], "X1 >= X0"),
    ],
)
def test_segment_parse_errors_name_the_flag(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "img.png", "--model", "m", "--out", str(tmp_path)] + extra)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _one_line_error(capsys, command: str) -> str:
    """The command's stderr, checked to be exactly one `sam-hf COMMAND: error: ...` line."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"sam-hf {command}: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


def test_segment_needs_a_prompt(tiny_model_dir, image_file, tmp_path, capsys):
    assert main(["segment", str(image_file), "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    assert "give at least one --point" in _one_line_error(capsys, "segment")


def test_segment_rejects_a_point_outside_the_image(tiny_model_dir, image_file, tmp_path, capsys):
    argv = ["segment", str(image_file), "--model", str(tiny_model_dir), "--point", "900,10"]
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert "point_coords must be XY pixels inside the image" in _one_line_error(capsys, "segment")


def _write_bad_images(folder) -> dict[str, str]:
    """name -> path of a missing, a non-image and a truncated image file."""
    folder.mkdir()
    (folder / "notes.png").write_text("not an image")
    full = folder / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (folder / "truncated.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return {
        "missing": str(folder / "missing.png"),
        "not an image": str(folder / "notes.png"),
        "truncated": str(folder / "truncated.png"),
    }


@pytest.mark.parametrize("command", ["segment", "generate"])
def test_unreadable_images_are_one_line_errors(command, tmp_path, capsys):
    reasons = {
        "missing": "must be an existing image file",
        "not an image": "cannot identify image file",
        "truncated": "image file is truncated",
    }
    extra = ["--point", "10,10"] if command == "segment" else []
    for kind, path in _write_bad_images(tmp_path / "images").items():
        argv = [command, path, "--model", "sam-hf-tiny", "--out", str(tmp_path / "out"), *extra]
        assert main(argv) == 2, kind
        line = _one_line_error(capsys, command)
        assert f"cannot read IMAGE {path}: " in line and reasons[kind] in line, line


@pytest.mark.parametrize("command", ["segment", "generate", "evaluate"])
def test_device_without_gpu_is_refused_before_loading_the_model(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    inputs = {
        "segment": [str(image), "--point", "5,5", "--out", str(tmp_path / "out")],
        "generate": [str(image), "--out", str(tmp_path / "out")],
        "evaluate": ["--dataset", str(tmp_path / "missing")],
    }
    # The model does not exist either: the device is checked first.
    argv = [command, *inputs[command], "--model", str(tmp_path / "no-model"), "--device", "cuda"]
    assert main(argv) == 2
    line = _one_line_error(capsys, command)
    assert "--device cuda: no CUDA GPU is available" in line and "use --device cpu" in line


def test_bad_device_names_are_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert cli.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(cli.SamHFUserError, match="has 1 CUDA device"):
        cli.resolve_device("cuda:1")
    with pytest.raises(cli.SamHFUserError, match="--device must be a torch device .* got 'gpu'"):
        cli.resolve_device("gpu")


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    missing = str(tmp_path / "no-dataset")
    assert main(["evaluate", "--dataset", missing, "--model", "sam-hf-tiny"]) == 2
    assert f"cannot read --dataset {missing}" in _one_line_error(capsys, "evaluate")
    assert main(["annotate", missing, "--model", "sam-hf-tiny", "--out", str(tmp_path / "out")]) == 2
    assert f"cannot read IMAGES {missing}" in _one_line_error(capsys, "annotate")


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["generate", str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")]
    with pytest.raises(cli.SamHFUserError, match="must be an existing image file"):
        main([*argv, "--debug"])
    with pytest.raises(cli.SamHFUserError):
        main(["--debug", *argv])
    monkeypatch.setenv("SAM_HF_DEBUG", "1")
    with pytest.raises(cli.SamHFUserError):
        main(argv)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(args):
        raise KeyError("crop_boxes")

    monkeypatch.setattr("sam_hf.cli.generate.run", broken)
    with pytest.raises(KeyError, match="crop_boxes"):
        main(["generate", "image.png", "--out", str(tmp_path)])


def test_other_environment_failures_exit_1(tmp_path, monkeypatch, capsys):
    def offline(args):
        raise ConnectionError("Couldn't reach 'me/data' on the Hub")

    monkeypatch.setattr("sam_hf.cli.generate.run", offline)
    assert main(["generate", "image.png", "--out", str(tmp_path)]) == 1
    assert _one_line_error(capsys, "generate").endswith("Couldn't reach 'me/data' on the Hub")


def test_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("sam_hf.cli.generate.run", interrupted)
    assert main(["generate", "image.png", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "sam-hf generate: interrupted\n"


def _offline(monkeypatch, cache) -> None:
    """HF_HUB_OFFLINE=1 with an empty Hub cache at `cache`; huggingface_hub reads the variable once, at import,
    into `constants.HF_HUB_OFFLINE`, which is what the resolver asks."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_default_model_is_the_shipped_one_when_offline(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path / "empty-cache")
    resolved = cli.resolve_model(None)
    assert (
        (resolved.kind, resolved.name)
        == ("shipped", cli.OFFLINE_FALLBACK_MODEL)
        == ("shipped", "sam-hf-tiny")
    )
    message = capsys.readouterr().err
    assert "'facebook/sam-vit-base' is not in the local Hub cache" in message
    assert "(HF_HUB_OFFLINE is set); using the shipped sam-hf-tiny" in message
    with pytest.raises(cli.SamHFUserError, match=r"^--model: 'my/model' is not in the local Hub cache"):
        cli.resolve_model("my/model")  # a model that is asked for is never swapped for the default


def test_default_model_is_sam_vit_base_when_cached_or_reachable(tmp_path, monkeypatch, capsys):
    """The default goes through the one resolver: one request to the Hub, or the cache alone when it fails."""
    from huggingface_hub import ModelInfo

    cache = tmp_path / "cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    answered = []

    def reachable(self, repo, **kwargs):
        answered.append(repo)
        return ModelInfo(id=repo, sha="0123abcd" * 5)

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", reachable)
    resolved = cli.resolve_model(None)
    assert (
        (resolved.kind, resolved.name) == ("hub", cli.DEFAULT_HUB_MODEL) == ("hub", "facebook/sam-vit-base")
    )
    assert answered == ["facebook/sam-vit-base"]
    assert resolved.hub_kwargs["revision"] == "0123abcd" * 5  # every file of the load from the probed commit

    def unreachable(self, repo, **kwargs):
        raise ConnectionError("no route to host")

    # Recorded as a download by branch name records it, so the cache finds the files by name offline.
    assert (cache / "models--facebook--sam-vit-base" / "refs" / "main").read_text() == "0123abcd" * 5
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    assert cli.resolve_model(None).name == "sam-hf-tiny"
    assert "the Hub is unreachable (ConnectionError: no route to host)" in capsys.readouterr().err
    # A cached snapshot is used when the Hub cannot be reached.
    snapshot = cache / "models--facebook--sam-vit-base" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--facebook--sam-vit-base" / "refs" / "main").write_text("0123abcd")
    resolved = cli.resolve_model(None)
    assert (resolved.name, resolved.hub_kwargs) == ("facebook/sam-vit-base", {"local_files_only": True})


def test_segment_without_model_runs_the_shipped_model_offline(image_file, tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path / "empty-cache")
    out = tmp_path / "out"
    assert main(["segment", str(image_file), "--point", "200,150", "--out", str(out)]) == 0
    assert "using the shipped sam-hf-tiny" in capsys.readouterr().err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["model"] == "sam-hf-tiny"
    assert (out / "overlay.png").exists()


@pytest.fixture
def small_astronaut(photos, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(photos["astronaut"]).resize((128, 128)).save(path)
    return path


def test_generate_explains_zero_masks(small_astronaut, tmp_path, capsys):
    """The shipped model at the default thresholds keeps no mask on a real photo: the hint names the
    thresholds, what each removes and thresholds that keep masks, and those do."""
    out = tmp_path / "out"
    argv = ["generate", str(small_astronaut), "--model", "sam-hf-tiny", "--points-per-side", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("0 masks")
    hint = [line for line in captured.err.splitlines() if line.startswith("hint: ")]
    assert len(hint) == 1, captured.err
    assert (
        "no mask passed the quality filters --pred-iou-thresh 0.88 --stability-score-thresh 0.95" in hint[0]
    )
    found = re.search(
        r"a prompt grid of 4x4 gives (\d+) candidate masks: --pred-iou-thresh 0.88 alone removes (\d+) .*"
        r"--stability-score-thresh 0.95 alone removes (\d+) .*"
        r"--pred-iou-thresh ([\d.]+) --stability-score-thresh ([\d.]+) keeps (\d+) of them",
        hint[0],
    )
    assert found, hint[0]
    candidates, by_iou, by_stability, iou, stability, kept = found.groups()
    assert int(candidates) > 0 and int(by_iou) <= int(candidates) and int(by_stability) <= int(candidates)
    assert int(kept) > 0
    suggested = ["--pred-iou-thresh", iou, "--stability-score-thresh", stability]
    assert main([*argv, *suggested, "--out", str(out)]) == 0
    assert not capsys.readouterr().out.startswith("0 masks")
    assert len(json.loads((out / "masks.json").read_text())) > 0


def test_generate_shows_progress_on_a_terminal(small_astronaut, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    argv = ["generate", str(small_astronaut), "--model", "sam-hf-tiny", "--out", str(tmp_path / "out")]
    argv += ["--points-per-side", "6", "--points-per-batch", "16", "--crop-n-layers", "1"]
    for extra, shown in (([], True), (["--no-progress"], False)):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert main(argv + extra) == 0
        # 36 prompts on the image and on each of its 4 crops.
        assert ("generate: 100%" in terminal.getvalue() and "180/180" in terminal.getvalue()) is shown


def test_segment_takes_mobile_sams_file_as_model(official_vit_t, image_file, tmp_path):
    """`--model mobile_sam.pt`: the TinyViT variant is told from the file, and the scores are MobileSAM's own."""
    import torch
    from mobile_sam import SamPredictor as MobileSamPredictor

    torch.save(official_vit_t.state_dict(), tmp_path / "mobile_sam.pt")
    out = tmp_path / "out"
    argv = ["segment", str(image_file), "--model", str(tmp_path / "mobile_sam.pt"), "--point", "120,80"]
    assert main([*argv, "--out", str(out)]) == 0
    reference = MobileSamPredictor(official_vit_t)
    reference.set_image(np.asarray(Image.open(image_file).convert("RGB")))
    _, scores, _ = reference.predict(point_coords=np.array([[120, 80]]), point_labels=np.array([1]))
    np.testing.assert_allclose(json.loads((out / "scores.json").read_text())["scores"], scores, atol=1e-4)
