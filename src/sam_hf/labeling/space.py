"""`sam-hf label --export-space DIR`: a folder that runs the labelling page as a Hugging Face Space.

The folder is self-contained, so it runs wherever `pip install -r requirements.txt && python app.py` works and
as a Gradio Space when pushed: `app.py` (a `LabelSession` and `build_app`, its `demo` at module level as Spaces
expect), `requirements.txt` (sam_hf's dependencies and the Gradio it was written with), `README.md` (the Space
card: SDK, version, app file), `images/` (a copy of the images or dataset folder), `model/` (a copy of a local
model; a shipped name or Hub id is referenced by name), and `sam_hf/` (a copy of this package's source, which
`app.py` imports first as the folder of the script run).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path

__all__ = ["export_space"]

_APP = '''"""The sam_hf labelling page as a Hugging Face Space (written by `sam-hf label --export-space`)."""

from pathlib import Path

from sam_hf.labeling import LabelSession
from sam_hf.labeling.app import build_app, launch

HERE = Path(__file__).resolve().parent
# A Space's persistent storage is mounted at /data; without it the labels last as long as the Space runs.
OUT = Path("/data/labels") if Path("/data").is_dir() else HERE / "labels"

session = LabelSession(model={model}, images=str(HERE / "images"), out=str(OUT))
demo = build_app(session)

if __name__ == "__main__":
    try:
        launch(demo)
    finally:
        session.close()  # writes the dataset and releases its lock
'''

_CARD = """---
{{ card_data }}
---

# {{ title }}

Label images in the browser with Segment Anything (`sam-hf label`): click on an object for a mask, accept it,
pre-fill confident masks in semi-automatic mode, and retrain the model on your labels between rounds. Written
by `sam-hf label --export-space`; run locally with `pip install -r requirements.txt && python app.py`.
Model: `{{ model }}`.
"""


def export_space(directory: str | os.PathLike, images: str | os.PathLike, model: str) -> Path:
    """Write a Space folder that runs `sam_hf.labeling.app` on `images` with `model`.

    Args:
        directory: the folder to write; must not exist or be empty.
        images: a folder of images or a dataset folder, as `LabelSession` takes it; copied into the Space.
        model: a model name in a form `sam_hf.hub.load_model` resolves; a local file or folder is copied into
            the Space, a shipped name or Hub id is kept as the name.

    Returns:
        The folder written.

    Raises:
        ValueError: `directory` is not empty, or `images` is not a folder.
    """
    import gradio
    from huggingface_hub import SpaceCard, SpaceCardData

    from ..hub.loading import portable_model_name

    folder = Path(directory)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--export-space must be a new or empty folder, got {str(folder)!r}")
    if not Path(images).is_dir():
        raise ValueError(f"images must be a folder of images or a dataset folder, got {str(images)!r}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(images, folder / "images")
    name = portable_model_name(model)
    model_argument = json.dumps(name)
    if os.path.exists(name):
        (shutil.copytree if os.path.isdir(name) else shutil.copy2)(name, folder / "model")
        model_argument = 'str(HERE / "model")'
    package = Path(__file__).resolve().parent.parent
    shutil.copytree(package, folder / "sam_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (folder / "app.py").write_text(_APP.format(model=model_argument))
    (folder / "requirements.txt").write_text(
        "\n".join([*_core_requirements(), f"gradio=={gradio.__version__}"]) + "\n"
    )
    card_data = SpaceCardData(
        title="sam-hf label", sdk="gradio", sdk_version=gradio.__version__, app_file="app.py"
    )
    SpaceCard.from_template(card_data, template_str=_CARD, title=card_data.title, model=name).save(
        folder / "README.md"
    )
    return folder


def _core_requirements() -> list[str]:
    """sam_hf's own install requirements (no extras), as its installed metadata lists them."""
    return [line for line in importlib.metadata.requires("sam_hf") or [] if "extra ==" not in line]
