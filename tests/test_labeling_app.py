"""The labelling page (`sam_hf.labeling.app`) and `sam-hf label`: a real browser on the real command, the
command's argument errors, and the exported Space."""

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_hf.cli import main
from sam_hf.data.rle import rle_to_mask

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "label_app.png"
_TIMEOUT_MS = 60_000


@pytest.fixture
def photos(tmp_path):
    """A folder with two real photos from scikit-image: the cat (JPEG) and the coffee cup (PNG)."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start `sam-hf label` as a user would; returns the process and the page's URL once it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sam_hf.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("labelling ") and " at http" in line:
            return process, line.split(" at ")[1].split()[0]
    process.kill()
    raise AssertionError("sam-hf label did not serve the page:\n" + "".join(lines))


def _stop(process: subprocess.Popen) -> str:
    """Ctrl-C, as a user stops the command (exit 130, as every command); returns its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    return output


def _canvas(page) -> np.ndarray:
    """The image the page shows, decoded from what the browser loaded."""
    source = page.locator("#sam-hf-canvas img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))


def _click(page, x: int, y: int) -> None:
    """Click image pixel (x, y) where the page draws the image: Gradio centres it in its element at natural
    size or smaller (`object-fit: scale-down`) and maps a click back with the same rule."""
    image = page.locator("#sam-hf-canvas img")
    width, height, natural_width, natural_height = image.evaluate(
        "i => [i.clientWidth, i.clientHeight, i.naturalWidth, i.naturalHeight]"
    )
    scale = min(width / natural_width, height / natural_height, 1.0)
    left, top = (width - natural_width * scale) / 2, (height - natural_height * scale) / 2
    image.click(position={"x": left + x * scale, "y": top + y * scale})


def _status(page, text: str) -> None:
    page.locator("#sam-hf-status").get_by_text(text).wait_for(timeout=_TIMEOUT_MS)


def test_ctrl_c_stops_the_page_with_exit_130(photos, tmp_path):
    port = _free_port()
    process, _ = _start(
        [
            "label",
            str(photos),
            "--model",
            "sam-hf-tiny",
            "--out",
            str(tmp_path / "labels"),
            "--port",
            str(port),
        ]
    )
    output = _stop(process)
    assert "sam-hf label: interrupted; rerun the same command to resume where you stopped" in output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the page's server is closed


@pytest.mark.slow
@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_label_in_the_browser(photos, tmp_path):
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="needs playwright (pip install playwright; it drives the system chromium)",
    )
    out = tmp_path / "labels"
    port = _free_port()
    process, url = _start(
        [
            "label",
            str(photos),
            "--model",
            "sam-hf-tiny",
            "--out",
            str(out),
            "--port",
            str(port),
            "--device",
            "cpu",
        ]
        + ["--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.5", "--points-per-side", "8"]
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            _status(page, "image 1 of 2, 0 object(s) accepted")
            before = _canvas(page)
            assert before.shape == (300, 451, 3)  # chelsea.jpg, the first image by name, at its own size

            # Assisted-manual: a positive click on the cat's head, then a second one that refines the mask.
            _click(page, 180, 110)
            _status(page, "after 1 click(s)")
            candidates = page.locator("#sam-hf-candidates label")
            assert candidates.count() == 3
            # Choosing another candidate makes it the pending mask: the status shows its predicted IoU.
            other = next(i for i in range(3) if not candidates.nth(i).locator("input").is_checked())
            label = candidates.nth(other).inner_text().strip()  # "2: IoU 0.354"
            candidates.nth(other).click()
            _status(page, f"predicted IoU {label.split('IoU ')[1]} after 1 click(s)")
            _click(page, 260, 150)
            _status(page, "after 2 click(s)")
            tinted = np.abs(_canvas(page).astype(int) - before).sum(axis=-1) > 60
            assert tinted.sum() > 500, "the pending mask is not drawn on the page"
            page.locator("body").click(position={"x": 5, "y": 5})  # focus off any field, as after a click
            page.keyboard.press("a")  # the accept shortcut
            _status(page, "1 object(s) accepted")

            # Semi-automatic: pre-filled masks appear; accept the first one; add one more object with a click.
            page.locator("#sam-hf-mode").get_by_text("semi-automatic").click()
            prefilled = page.locator("#sam-hf-prefilled input[type=radio]")
            prefilled.first.wait_for(timeout=_TIMEOUT_MS)
            offered = prefilled.count()
            page.locator("#sam-hf-accept-prefilled").click()
            _status(page, "2 object(s) accepted")
            page.wait_for_function(
                f"document.querySelectorAll('#sam-hf-prefilled input[type=radio]').length === {offered - 1}",
                timeout=_TIMEOUT_MS,
            )
            _click(page, 60, 250)
            _status(page, "after 1 click(s)")
            page.screenshot(path=str(_screenshot_path(tmp_path)), full_page=True)
            page.locator("#sam-hf-class input, #sam-hf-class textarea").first.fill("floor")
            page.locator("#sam-hf-accept").click()
            _status(page, "3 object(s) accepted")

            page.locator("#sam-hf-mode").get_by_text("manual").click()
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("n")  # next image: finishes this one
            _status(page, "image 2 of 2, 0 object(s) accepted")

            # The coffee cup, in manual mode: a click undone with `z`, then a box (two clicks) and a brush
            # dab at its centre accepted.
            _click(page, 300, 150)
            _status(page, "after 1 click(s)")
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("z")
            page.locator("#sam-hf-status").get_by_text("pending mask").wait_for(state="hidden")
            page.locator("#sam-hf-tool").get_by_text("box").click()
            _click(page, 200, 40)
            _status(page, "first corner at (200, 40)")
            _click(page, 430, 300)
            _status(page, "after 1 click(s), 0 brush stroke(s)")
            page.locator("#sam-hf-tool").get_by_text("brush", exact=True).click()
            _click(page, 315, 170)
            _status(page, "after 1 click(s), 1 brush stroke(s)")
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("Enter")
            _status(page, "1 object(s) accepted")
            page.locator("#sam-hf-tool").get_by_text("positive click").click()
            _click(page, 80, 330)
            _status(page, "after 1 click(s)")
            page.locator("#sam-hf-accept").click()
            _status(page, "2 object(s) accepted")
            page.locator("#sam-hf-objects input").click()
            page.get_by_role("option", name="2: (manual, 1 clicks, 0 strokes)").click()
            page.locator("#sam-hf-delete").click()
            _status(page, "1 object(s) accepted")

            page.locator("#sam-hf-export").click()
            page.locator("#sam-hf-exported").get_by_text(f"exported to {out}").wait_for(timeout=_TIMEOUT_MS)

            # A retraining round from the page; its model takes over and the table gains its row.
            page.locator("#sam-hf-retrain").click()
            page.locator("#sam-hf-progress").get_by_text("the new model is loaded").wait_for(timeout=180_000)
            page.wait_for_function(  # the new round's model, a `sam-hf finetune` folder in OUT/rounds/1
                "path => document.querySelector('#sam-hf-rounds').textContent.includes(path)",
                arg=str(out / "rounds" / "1"),
                timeout=_TIMEOUT_MS,
            )
            page.close()
            browser.close()
    finally:
        output = _stop(process)
    assert "Traceback" not in output

    import datasets

    dataset = datasets.load_from_disk(str(out))
    rows = [row for split in dataset.values() for row in split if row["file_name"] == "chelsea.jpg"]
    assert len(rows) == 1
    row = rows[0]
    assert len(row["masks"]) == 3
    assert sorted(row["stage"]) == ["auto", "manual", "semi"]
    stage = dict(zip(row["stage"], range(3), strict=True))
    assert row["num_clicks"][stage["manual"]] == 2
    # The first click, as the browser placed it on the drawn image, reached the session in image pixels.
    assert np.abs(np.array(row["point_coords"][stage["manual"]]) - [180, 110]).max() <= 1.0
    assert row["num_clicks"][stage["semi"]] == 1
    assert row["num_clicks"][stage["auto"]] == 0
    assert row["category"][stage["semi"]] == "floor"
    assert set(row["model_id"]) == {"sam-hf-tiny"}
    assert all(revision for revision in row["model_revision"])
    assert all(seconds > 0 for seconds in row["seconds"])
    assert (out / "annotations.json").is_file()
    (coffee,) = [row for split in dataset.values() for row in split if row["file_name"] == "coffee.png"]
    assert coffee["stage"] == ["manual"] and coffee["num_clicks"] == [1] and coffee["num_strokes"] == [1]
    assert rle_to_mask(coffee["masks"][0])[170, 315]  # the brush's pixel is in the stored mask
    x, y, width, height = coffee["bbox"][0]
    assert 200 < x + width / 2 < 430 and 40 < y + height / 2 < 300  # the box's mask, not the deleted one
    assert (out / "rounds" / "1").is_dir()


def _screenshot_path(tmp_path: Path) -> Path:
    """docs/images/label_app.png with SAM_HF_UPDATE_SCREENSHOT=1 (the README's picture), else in tmp_path."""
    if os.environ.get("SAM_HF_UPDATE_SCREENSHOT", "0") == "1":
        _SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        return _SCREENSHOT
    return tmp_path / "label_app.png"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--out is required"),
        (["--out", "labels", "--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--out", "labels", "--pred-iou-thresh", "1.5"], r"--pred-iou-thresh must be in \[0, 1\], got 1.5"),
        (["--out", "labels", "--points-per-side", "0"], "--points-per-side must be at least 1, got 0"),
        (["--export-space", "space", "--retrain"], "--export-space and --retrain cannot be combined"),
    ],
)
def test_label_argument_errors(photos, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["label", str(photos), "--model", "sam-hf-tiny", *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sam-hf label: error: ")
    assert len(error.strip().splitlines()) == 1
    assert re.search(message, error), error


def test_label_input_errors(photos, tmp_path, capsys):
    assert (
        main(["label", str(tmp_path / "missing"), "--model", "sam-hf-tiny", "--out", str(tmp_path / "a")])
        == 2
    )
    error = capsys.readouterr().err
    assert re.search(
        r"IMAGES_OR_DATASET .*: a source must be an image folder, a dataset folder, a COCO \.json file", error
    )
    assert "(no such file or folder)" in error
    assert (
        main(["label", str(photos), "--model", str(tmp_path / "no-model.pth"), "--out", str(tmp_path / "b")])
        == 2
    )
    assert "sam-hf label: error: --model: " in capsys.readouterr().err


def test_label_without_gradio_says_how_to_install_it(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["label", str(photos), "--model", "sam-hf-tiny", "--out", str(tmp_path / "labels")]) == 2
    assert 'pip install "sam_hf[app]"' in capsys.readouterr().err


def test_label_refuses_a_dataset_another_session_writes(photos, tmp_path, capsys):
    from sam_hf.labeling import LabelSession

    out = tmp_path / "labels"
    with LabelSession(model="sam-hf-tiny", images=photos, out=out, device="cpu"):
        assert main(["label", str(photos), "--model", "sam-hf-tiny", "--out", str(out), "--retrain"]) == 2
    error = capsys.readouterr().err
    assert "sam-hf label: error: --out: " in error and "is being labelled by process" in error


@pytest.mark.slow
def test_export_space_builds_the_page_without_launching(photos, tmp_path):
    from sam_hf.hub import load_model
    from sam_hf.hub.saving import save_model

    local_model = save_model(load_model("sam-hf-tiny", verbose=False)[0], tmp_path / "my-model")
    space = tmp_path / "space"
    assert main(["label", str(photos), "--model", local_model, "--export-space", str(space)]) == 0
    assert sorted(p.name for p in (space / "images").iterdir()) == ["chelsea.jpg", "coffee.png"]
    assert (space / "model" / "config.json").is_file()  # a local model travels with the Space
    requirements = (space / "requirements.txt").read_text().splitlines()
    import gradio

    assert f"gradio=={gradio.__version__}" in requirements and any(
        r.startswith("torch") for r in requirements
    )
    card = (space / "README.md").read_text()
    assert card.count("# sam-hf label") == 1 and "sdk: gradio" in card and "app_file: app.py" in card
    assert f"sdk_version: {gradio.__version__}" in card
    # As a Space runs it, minus the launch: app.py imports the sam_hf copy beside it and builds the page.
    probe = (
        "import runpy, gradio, sam_hf; namespace = runpy.run_path('app.py'); "
        "print(sam_hf.__file__); print(type(namespace['demo']).__name__, namespace['session'].num_images); "
        "print(namespace['session'].model_id)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=space, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    package, built, model_id = result.stdout.strip().splitlines()[-3:]
    assert Path(package).resolve().is_relative_to(space.resolve())
    assert built == "Blocks 2"
    assert Path(model_id).resolve() == (space / "model").resolve()
    assert main(["label", str(photos), "--model", local_model, "--export-space", str(space)]) == 2

    shipped = tmp_path / "shipped-space"
    assert main(["label", str(photos), "--model", "sam-hf-tiny", "--export-space", str(shipped)]) == 0
    assert 'model="sam-hf-tiny"' in (shipped / "app.py").read_text() and not (shipped / "model").exists()


def test_label_grows_and_corrects_an_annotate_dataset_in_place(photos, tmp_path, monkeypatch, capsys):
    """`sam-hf label` on `sam-hf annotate` output into the same folder keeps the automatic masks and adds the new
    object with its class as a COCO category; an image added to a labelled folder is appended."""
    import json

    from pycocotools.coco import COCO

    import sam_hf.cli.label as cli_label

    def accept_a_box(session, args):
        session.set_box(10, 10, 120, 100)
        session.accept(class_name="mug")

    monkeypatch.setattr(cli_label, "serve", accept_a_box)
    auto = tmp_path / "auto"
    grid = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    assert main(["annotate", str(photos), "--model", "sam-hf-tiny", "--out", str(auto), *grid]) == 0
    before = COCO(str(auto / "annotations.json"))
    assert main(["label", str(auto), "--model", "sam-hf-tiny", "--out", str(auto)]) == 0
    after = COCO(str(auto / "annotations.json"))
    assert len(after.getAnnIds()) == len(before.getAnnIds()) + 1
    assert {c["name"]: c["id"] for c in after.loadCats(after.getCatIds())} == {"object": 1, "mug": 2}

    labels = tmp_path / "labels"
    assert main(["label", str(photos), "--model", "sam-hf-tiny", "--out", str(labels)]) == 0
    Image.fromarray(np.asarray(Image.open(photos / "coffee.png"))[:200, :300]).save(photos / "a-crop.png")
    assert main(["label", str(photos), "--model", "sam-hf-tiny", "--out", str(labels)]) == 0
    manifest = json.loads((labels / "labeling" / "manifest.json").read_text())
    assert manifest["images"] == ["chelsea.jpg", "coffee.png", "a-crop.png"]
    assert len(COCO(str(labels / "annotations.json")).getAnnIds()) == 2  # one object per run, both kept
