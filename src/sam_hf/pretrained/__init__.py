"""Models shipped inside the package, loadable offline by name (e.g. `sam-hf-tiny`).

Each shipped model is a `save_pretrained` folder here (weights, `config.json`, `preprocessor_config.json`,
model card). `shipped_model_path(name)` maps a name to its folder; the resolver (`sam_hf.hub.locate_model`)
and `SamHFModel.from_pretrained` call it before trying the Hub. `shipped_model_name(path)` maps a folder back
to its name, so what a model records about its origin (an adapter's base) holds on every machine, not only on
the one that installed it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED_MODELS", "shipped_model_name", "shipped_model_path"]

_ROOT = Path(__file__).resolve().parent

# Names a user can pass instead of a path or Hub id.
SHIPPED_MODELS: tuple[str, ...] = ("sam-hf-tiny",)


def shipped_model_path(name: str | Path) -> Path | None:
    """Folder of the shipped model called `name` (also accepted: `sam_hf/<name>`), or None for any other name."""
    name = str(name)
    if name.startswith("sam_hf/"):
        name = name[len("sam_hf/") :]
    if name not in SHIPPED_MODELS:
        return None
    return _ROOT / name


def shipped_model_name(name_or_path: str | Path) -> str | None:
    """The name of a shipped model given by name (`sam-hf-tiny`, `sam_hf/sam-hf-tiny`) or by its package folder;
    None for anything else. A local folder that merely has a shipped model's name is not one."""
    text = str(name_or_path)
    if Path(text).exists():
        resolved = Path(text).resolve()
        return next((name for name in SHIPPED_MODELS if (_ROOT / name).resolve() == resolved), None)
    folder = shipped_model_path(text)
    return None if folder is None else folder.name
