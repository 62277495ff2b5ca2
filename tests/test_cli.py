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


def test_segment_needs_a_prompt(tiny_model_dir, image_file, tmp_path):
    with pytest.raises(SystemExit, match="at least one --point"):
        main(["segment", str(image_file), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")])


def test_segment_rejects_a_point_outside_the_image(tiny_model_dir, image_file, tmp_path):
    with pytest.raises(SystemExit, match="point_coords must be XY pixels inside the image"):
        main(
            [
                "segment",
                str(image_file),
                "--model",
                str(tiny_model_dir),
                "--point",
                "900,10",
                "--out",
                str(tmp_path),
            ]
        )


def test_default_model_is_the_shipped_one_when_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.resolve_model(None) == cli.OFFLINE_FALLBACK_MODEL == "sam-hf-tiny"
    message = capsys.readouterr().err
    assert "facebook/sam-vit-base is not cached and HF_HUB_OFFLINE is set" in message
    assert "using the shipped sam-hf-tiny" in message
    assert cli.resolve_model("my/model") == "my/model"


def test_default_model_is_sam_vit_base_when_cached_or_reachable(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    answered = []
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda self, repo, timeout: answered.append(repo))
    assert cli.resolve_model(None) == cli.DEFAULT_HUB_MODEL == "facebook/sam-vit-base"
    assert answered == ["facebook/sam-vit-base"]

    def unreachable(self, repo, timeout):
        raise ConnectionError("no route to host")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    assert cli.resolve_model(None) == "sam-hf-tiny"
    assert "the Hub is unreachable (ConnectionError)" in capsys.readouterr().err
    # A cached snapshot is used without asking the Hub.
    snapshot = cache / "models--facebook--sam-vit-base" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--facebook--sam-vit-base" / "refs").mkdir()
    (cache / "models--facebook--sam-vit-base" / "refs" / "main").write_text("0123abcd")
    assert cli.resolve_model(None) == "facebook/sam-vit-base"


def test_segment_without_model_runs_the_shipped_model_offline(image_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert main(["segment", str(image_file), "--point", "200,150", "--out", str(out)]) == 0
    assert "using the shipped sam-hf-tiny" in capsys.readouterr().err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["model"] == "sam-hf-tiny"
    assert (out / "overlay.png").exists()
