"""Models shipped inside the package, loadable offline by name (e.g. `sam-hf-tiny`).

Each shipped model is a `save_pretrained` folder here (weights, `config.json`, `preprocessor_config.json`,
model card). `shipped_model_path(name)` maps a name to its folder; `from_pretrained` and the CLI defaults
call it before trying the Hub.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED_MODELS", "shipped_model_path"]

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
