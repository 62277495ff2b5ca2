"""Source files saved next to weights, so a folder loads with `trust_remote_code=True` where sam_hf is absent.

transformers loads remote code from one flat folder: a module and the modules it imports relatively, all
siblings (`from .image_encoder import ...`; see `transformers.dynamic_module_utils.get_relative_import_files`).
`modeling/` is flat already, and transformers copies it itself (`register_for_auto_class`). The processor
imports across the package (`.data.images`, `.prompting.batching`), so `save_remote_code` writes a module with
every module it imports relatively, each as a sibling, with those import lines pointing at the siblings.
Nothing else in a file changes. This module imports nothing from the package, so it travels with the code.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

__all__ = ["remote_code_files", "save_remote_code"]

# The saved configs whose `auto_map` names remote code: the model's and the processor's.
_CONFIG_NAMES = ("config.json", "preprocessor_config.json")


def save_remote_code(module_name: str, folder: str | os.PathLike) -> list[Path]:
    """Write the source of `module_name` and of every module it imports relatively (recursively) into `folder`.

    Args:
        module_name: an imported module, e.g. `SamHFProcessor.__module__`.
        folder: the saved model or processor folder (created if missing).

    Returns:
        The files written, `module_name`'s first.

    Raises:
        ValueError: a relative import names a package rather than a module (`from . import x`,
            `from .data import x`), or two modules have the same file name; neither can be flattened.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}  # file name -> flattened source
    owners: dict[str, str] = {}  # file name -> module it came from
    pending = [module_name]
    while pending:
        name = pending.pop(0)
        path = Path(
            sys.modules[name].__file__ if name in sys.modules else importlib.util.find_spec(name).origin
        )
        if path.name in owners:
            if owners[path.name] != name:
                raise ValueError(
                    f"cannot save the remote code of {module_name}: {owners[path.name]} and {name} are both "
                    f"{path.name}, and the saved modules must be siblings"
                )
            continue
        owners[path.name] = name
        source, imported = _flatten_relative_imports(path.read_text(encoding="utf-8"), name)
        sources[path.name] = source
        pending.extend(imported)
    written = []
    for file_name, source in sources.items():
        target = folder / file_name
        target.write_text(source, encoding="utf-8")
        written.append(target)
    return written


def remote_code_files(folder: str | os.PathLike) -> list[Path]:
    """The source files in `folder` that its configs' `auto_map` entries and `config.json`'s `custom_pipelines`
    need: each module named there and the modules it imports relatively, as transformers collects them. What
    must travel with the folder (an upload)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(folder)
    files: set[Path] = set()
    for config_name in _CONFIG_NAMES:
        config = folder / config_name
        if not config.is_file():
            continue
        record = json.loads(config.read_text(encoding="utf-8"))
        references = list((record.get("auto_map") or {}).values())
        references += [task["impl"] for task in (record.get("custom_pipelines") or {}).values()]
        for reference in references:
            module = folder / f"{reference.rpartition('.')[0]}.py"
            if "--" not in reference and module.is_file():  # `repo--module.Class` names code in another repo
                files.add(module)
                files.update(Path(f) for f in get_relative_import_files(module))
    return sorted(files)


def _flatten_relative_imports(source: str, module_name: str) -> tuple[str, list[str]]:
    """`source` with each relative import made a sibling import, and the absolute names of the modules imported."""
    package = module_name.rpartition(".")[0]
    lines = source.splitlines(keepends=True)
    imported = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        relative = "." * node.level + (node.module or "")
        target = importlib.util.resolve_name(relative, package)
        spec = importlib.util.find_spec(target)
        if node.module is None or spec is None or spec.submodule_search_locations is not None:
            raise ValueError(
                f"{module_name} line {node.lineno}: `from {relative} import ...` must name a module (a .py file) "
                "to be saved as remote code, not a package"
            )
        sibling = target.rpartition(".")[2]
        line = lines[node.lineno - 1]
        lines[node.lineno - 1] = re.sub(
            rf"from\s+{re.escape(relative)}\s+import", f"from .{sibling} import", line
        )
        imported.append(target)
    return "".join(lines), imported
