"""One resolver for "a model": whatever form it comes in, find out what it is, load it, say what was loaded.

The forms (`MODEL_KINDS`), all accepted by `load_model` and so by every command's `--model`:
    - `"shipped"`: a model shipped inside the package, by name (`sam-hf-tiny`) or by its package folder;
    - `"hub"`: a Hub repo id holding a sam_hf model, a transformers SAM model or a PEFT adapter;
    - `"meta"`: a Meta state dict file (`sam_vit_b_01ec64.pth`, ...);
    - `"sam_hf"`: a `SamHFModel.save_pretrained` folder;
    - `"transformers"`: a transformers `SamModel` or `SamHQModel` folder;
    - `"adapter"`: a PEFT adapter folder (`adapter_config.json` naming its base model);
    - `"finetune_output"`: the folder `sam-hf finetune` writes: the adapter at top level (or the full model
      with `--lora-r 0`), the adapter merged into its base in `merged/`, run records beside them.

A name is resolved once, by `locate_model`, into a `ResolvedModel` that every loader takes (`load_model`,
`load_processor`, the CLI's `--model`), so one load never asks twice what a name is. A Hub repo id is checked
with one request before anything is downloaded, so a typo, an unknown repo or an unreachable Hub fails at once
with that cause (and a near miss of a shipped name is pointed out) instead of after huggingface_hub's retries of
every file; the answer pins the repo's commit, so every file of the load comes from that commit and transformers
does not ask again. With `HF_HUB_OFFLINE=1`, or when the Hub is unreachable, a repo in the local Hub cache loads
from there without any request; one that is not cached is refused naming the cause (offline:
`checkpoint_io.hub_cache_miss`'s, as every entry point gives it).

Every model is also given a *portable name*, the form that resolves on any machine where it can: the
shipped name, the Hub id, else the absolute local path. A loaded model carries it as `name_or_path`, which is
what PEFT records as an adapter's base (`base_model_name_or_path`), so an adapter trained on a shipped or Hub
model reloads anywhere, and one trained on a local file says which file must travel with it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..modeling import SamHFModel
from ..modeling.checkpoint_io import ResolvedCheckpoint, hub_cache_miss, resolve_checkpoint
from ..pretrained import SHIPPED_MODELS, shipped_model_name, shipped_model_path
from ..processing_sam_hf import PROCESSOR_CONFIG_NAME, SamHFProcessor

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "FINETUNE_CONFIG_NAME",
    "MERGED_FOLDER",
    "MODEL_KINDS",
    "ResolvedModel",
    "adapter_base_model",
    "load_model",
    "load_pretrained",
    "load_processor",
    "locate_model",
    "portable_model_name",
    "update_digest",
]

MODEL_KINDS = ("shipped", "hub", "meta", "sam_hf", "transformers", "adapter", "finetune_output")
ADAPTER_CONFIG_NAME = "adapter_config.json"
# What `sam_hf.training.loop.finetune` writes into its output folder besides the adapter or model.
FINETUNE_CONFIG_NAME = "finetune_config.json"
MERGED_FOLDER = "merged"
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # `name` or `namespace/name`
_HUB_PROBE_TIMEOUT_S = 10  # one request that a Hub repo exists, before any download

_KIND_TEXT = {
    "shipped": "shipped model",
    "hub": "Hub repo",
    "meta": "official checkpoint file",
    "sam_hf": "sam_hf folder",
    "transformers": "transformers SAM folder",
    "adapter": "PEFT adapter folder",
    "finetune_output": "sam-hf finetune output",
}
_EXPECTED = (
    f"expected a shipped model name {SHIPPED_MODELS}, a Hub repo id, an official state dict file (Meta's SAM, MobileSAM, SAM-HQ .pth), a sam_hf or "
    "transformers SAM folder (config.json), a PEFT adapter folder (adapter_config.json) or a `sam-hf finetune` "
    "output folder"
)


@dataclass(frozen=True)
class ResolvedModel:
    """What a model argument named, before or after loading.

    Args:
        kind: one of `MODEL_KINDS`.
        name: portable name (see module docstring): shipped name, Hub id, or absolute local path.
        path: the local file or folder that holds it (None for a Hub repo).
        base: portable name of the base model an adapter applies to; None for a full model.
        merged: `load_model` folded the adapter into its base (a plain `SamHFModel`).
        encoder_type: the loaded model's image encoder (`vision_config.encoder_type`: "vit" for SAM,
            "tiny_vit" for MobileSAM); None before loading, since only the weights or config tell it.
        decoder_type: the loaded model's mask decoder (`mask_decoder_config.decoder_type`: "sam", or "hq" for
            SAM-HQ); None before loading.
        hub_kwargs: the Hub arguments its files are fetched with: the caller's, with `revision` pinned to the
            commit the Hub named, or `local_files_only` when only the local cache can serve them.
        checkpoint: where a full model's config and weights are (`checkpoint_io.resolve_checkpoint`), which the
            model and processor loaders take as it is; found when located for a local folder, when loaded
            otherwise (a Hub repo's weights are not fetched to locate it).
        located_base: what `locate_model` made of `base`, when the caller has it (e.g. the model an adapter was
            just trained on), so loading the adapter does not resolve its base again; None: located on load.
    """

    kind: str
    name: str
    path: str | None = None
    base: str | None = None
    merged: bool = False
    encoder_type: str | None = None
    decoder_type: str | None = None
    hub_kwargs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    checkpoint: ResolvedCheckpoint | None = field(default=None, repr=False, compare=False)
    located_base: ResolvedModel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.located_base is not None and self.located_base.name != self.base:
            raise ValueError(
                f"located_base must be what locate_model made of base {self.base!r}, got one named "
                f"{self.located_base.name!r}"
            )

    @property
    def is_local(self) -> bool:
        """Only this machine can load it: the name is a local path, not a shipped name or Hub id."""
        return self.kind not in ("shipped", "hub")

    def describe(self) -> str:
        """One line: what was loaded, from where, on which base, with which image encoder and mask decoder."""
        text = f"{_KIND_TEXT[self.kind]} {self.name}"
        if self.base is not None:
            text += f" (LoRA adapter on base {self.base}{', merged' if self.merged else ''})"
        if self.encoder_type is not None:
            text += f", image encoder {self.encoder_type}"
        if self.decoder_type is not None:
            text += f", mask decoder {self.decoder_type}"
        return text


def portable_model_name(name_or_path: str | os.PathLike) -> str:
    """The name of a model that resolves on any machine where it can: the shipped name for a shipped model
    (also when given by its package folder), the absolute path for anything local, else the Hub id as given."""
    text = os.fspath(name_or_path)
    shipped = shipped_model_name(text)
    if shipped is not None:
        return shipped
    return os.path.abspath(text) if os.path.exists(text) else text


def locate_model(name_or_path: str | os.PathLike | ResolvedModel, **hub_kwargs: Any) -> ResolvedModel:
    """Find out which of `MODEL_KINDS` `name_or_path` is, without loading weights: the one place a name is
    resolved (a `ResolvedModel` given back is returned as it is).

    Args:
        name_or_path: any form listed in the module docstring.
        **hub_kwargs: `revision`, `token`, `cache_dir`, ... for a Hub repo.

    Raises:
        ValueError: it is none of the forms; the message says what was found and what is expected.
    """
    if isinstance(name_or_path, ResolvedModel):
        if hub_kwargs:
            raise TypeError(
                f"hub arguments go to the locate_model call that resolved {name_or_path.name!r}, got "
                f"{sorted(hub_kwargs)}"
            )
        return name_or_path
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError(f"name_or_path must name a model; {_EXPECTED}; got {text!r}")
    shipped = shipped_model_name(text)
    if shipped is not None:
        return ResolvedModel("shipped", shipped, str(shipped_model_path(shipped)))
    path = Path(text)
    name = os.path.abspath(text)
    if path.is_file():
        return ResolvedModel("meta", name, name)
    if path.is_dir():
        base = adapter_base_model(path)
        if (path / FINETUNE_CONFIG_NAME).is_file():
            return ResolvedModel("finetune_output", name, name, base)
        if base is not None:
            return ResolvedModel("adapter", name, name, base)
        if not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())[:12]
            raise ValueError(
                f"{text!r} has no config.json or {ADAPTER_CONFIG_NAME} (found: {found}); {_EXPECTED}"
            )
        checkpoint = resolve_checkpoint(name)
        return ResolvedModel(checkpoint.format, name, name, checkpoint=checkpoint)
    if not _HUB_ID.fullmatch(text):
        raise ValueError(
            f"{text!r} is no local file or folder, and no Hub repo id (namespace/name); {_EXPECTED}"
            f"{_near_miss(text)}"
        )
    hub_kwargs = _reach_hub(text, hub_kwargs)
    return ResolvedModel("hub", text, None, _hub_adapter_base(text, hub_kwargs), hub_kwargs=hub_kwargs)


def load_model(
    name_or_path: str | os.PathLike | ResolvedModel,
    *,
    merge_adapter: bool = False,
    dtype: torch.dtype | str | None = None,
    verbose: bool = True,
    **hub_kwargs: Any,
) -> tuple[torch.nn.Module, SamHFProcessor, ResolvedModel]:
    """Load a model in any form (see module docstring) with its processor, and say which it loaded.

    Args:
        name_or_path: shipped name, Hub id, Meta file, sam_hf / transformers / adapter / finetune output folder,
            or what `locate_model` made of one (it is not resolved again).
        merge_adapter: fold an adapter into its base and return a plain `SamHFModel` (what inference wants;
            for a `sam-hf finetune` output, its `merged/` folder is loaded). Otherwise an adapter comes back as a
            `peft.PeftModel` on its base, so `disable_adapter()` gives the base model.
        dtype: a torch dtype or its name for the weights (None: as `SamHFModel.from_pretrained` loads them).
        verbose: print one line to stderr saying what was loaded.
        **hub_kwargs: `revision`, `token`, `cache_dir`, ... for a Hub repo (for a name, not a `ResolvedModel`).

    Returns:
        `(model, processor, resolved)`: the model in eval mode, named by its portable name
        (`model.name_or_path`, what PEFT records as the base of an adapter trained on it); the processor saved
        with the model (else with its base, else matching its config); what was loaded.
    """
    resolved = locate_model(name_or_path, **hub_kwargs)
    hub_kwargs = resolved.hub_kwargs
    location = resolved.path or resolved.name
    model_kwargs = dict(hub_kwargs, **({"dtype": dtype} if dtype is not None else {}))
    merged_folder = Path(location) / MERGED_FOLDER
    if (
        resolved.base is not None
        and merge_adapter
        and resolved.kind == "finetune_output"
        and (merged_folder / "config.json").is_file()
    ):
        model = SamHFModel.from_pretrained(merged_folder, **model_kwargs)
        processor = _processor(str(merged_folder), model.config)
        resolved = replace(resolved, merged=True)
    elif resolved.base is not None:
        from peft import PeftModel

        base, base_processor, _ = load_model(
            resolved.located_base or resolved.base, merge_adapter=True, dtype=dtype, verbose=False
        )
        model = PeftModel.from_pretrained(
            base, resolved.path or _downloaded_adapter(resolved.name, hub_kwargs)
        )
        processor = _processor(location, None, hub_kwargs) or base_processor
        if merge_adapter:
            model = model.merge_and_unload()
            resolved = replace(resolved, merged=True)
    else:
        checkpoint = resolved.checkpoint or resolve_checkpoint(location, **hub_kwargs)
        model = SamHFModel.from_pretrained(checkpoint, **model_kwargs)
        processor = _processor(checkpoint, model.config, hub_kwargs)
        resolved = replace(resolved, checkpoint=checkpoint)
    if not hasattr(model, "peft_config"):  # an unmerged PeftModel keeps its base's name
        model.name_or_path = model.config.name_or_path = resolved.name
    resolved = replace(
        resolved,
        encoder_type=model.config.vision_config.encoder_type,
        decoder_type=model.config.mask_decoder_config.decoder_type,
    )
    if verbose:
        print(f"sam_hf: loaded {resolved.describe()}", file=sys.stderr)
    return model.eval(), processor, resolved


def load_pretrained(name_or_path: str | os.PathLike | ResolvedModel, **kwargs: Any) -> torch.nn.Module:
    """The model of `load_model(name_or_path, **kwargs)`: a `SamHFModel`, or a `PeftModel` for an adapter."""
    return load_model(name_or_path, **kwargs)[0]


def load_processor(name_or_path: str | os.PathLike | ResolvedModel, config: Any = None) -> SamHFProcessor:
    """The processor of a model in any form (or what `locate_model` made of one): the one saved with it, else
    with its base model, else the one matching the model config (`config`, when given, else the model's)."""
    resolved = locate_model(name_or_path)
    processor = _processor(resolved.checkpoint or resolved.path or resolved.name, None, resolved.hub_kwargs)
    if processor is not None:
        return processor
    if resolved.base is not None:
        return load_processor(resolved.located_base or resolved.base, config)
    return SamHFProcessor.from_model_config(config or load_pretrained(resolved, verbose=False).config)


def update_digest(digest: Any, state_dict: dict[str, torch.Tensor]) -> None:
    """Feed each tensor's name and bytes, in name order, into `digest` (a `hashlib` object): what identifies a
    model's weights, buffers included, where no name or revision does.

    Tensors are flattened first: a 0-dim tensor (batch norm's `num_batches_tracked`) has no byte view.
    """
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def adapter_base_model(folder: str | os.PathLike) -> str | None:
    """Portable name of the base model a PEFT adapter folder names; None when `folder` holds no adapter.

    Raises:
        ValueError: the adapter names no base (`base_model_name_or_path` missing or null).
    """
    adapter_config = Path(folder) / ADAPTER_CONFIG_NAME
    if not adapter_config.is_file():
        return None
    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter_config} must name its base model in base_model_name_or_path (a shipped name, Hub id or "
            f"path), got {base!r}"
        )
    return portable_model_name(base)


def _reach_hub(repo_id: str, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Hub arguments to load `repo_id` with, after one request that the repo exists, its `revision` pinned
    to the commit the Hub named (so no later download asks again); the cache alone (`local_files_only`) when
    offline (`HF_HUB_OFFLINE`, `local_files_only`) or when the Hub is unreachable.

    Raises:
        ValueError: no such repo or revision, a gated repo without access, or neither the Hub nor the local
            cache has it; the message gives the cause and a shipped name `repo_id` nearly matches.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_cache_miss(repo_id, hub_kwargs)
    if offline is not None:
        if _in_cache(repo_id, hub_kwargs):
            return {**hub_kwargs, "local_files_only": True}
        raise ValueError(f"{offline}{_near_miss(repo_id)}")
    revision = hub_kwargs.get("revision")
    try:
        info = HfApi().model_info(
            repo_id, revision=revision, token=hub_kwargs.get("token"), timeout=_HUB_PROBE_TIMEOUT_S
        )
    except RevisionNotFoundError as error:
        raise ValueError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from error
    except GatedRepoError as error:
        raise ValueError(
            f"the Hub repo {repo_id!r} is gated: accept its terms on the Hub and log in (hf auth login or HF_TOKEN)"
        ) from error
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"no such model: {repo_id!r} is no local file or folder, no shipped model and no Hub repo visible "
            f"with your token{_near_miss(repo_id)}; {_EXPECTED}"
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no"
        raise ValueError(
            f"the Hub answered {status} for {repo_id!r} ({error}); retry later{_near_miss(repo_id)}"
        ) from error
    except (
        Exception
    ) as error:  # no answer at all (DNS, connection, timeout), whatever the HTTP client's types
        if _in_cache(repo_id, hub_kwargs):
            return {**hub_kwargs, "local_files_only": True}
        raise ValueError(
            f"the Hub is unreachable ({type(error).__name__}: {error}) and {repo_id!r} is not in the local Hub "
            f"cache; connect, or set HF_HUB_OFFLINE=1 and use a model cached or on disk{_near_miss(repo_id)}"
        ) from error
    commit = getattr(info, "sha", None)
    if commit is None or commit == revision:
        return hub_kwargs
    _remember_commit(repo_id, revision, commit, hub_kwargs.get("cache_dir"))
    return {**hub_kwargs, "revision": commit}


def _in_cache(repo_id: str, hub_kwargs: dict[str, Any]) -> bool:
    """The local Hub cache holds `repo_id`'s config or adapter config at the asked revision."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(
            try_to_load_from_cache(
                repo_id, name, cache_dir=hub_kwargs.get("cache_dir"), revision=hub_kwargs.get("revision")
            ),
            str,
        )
        for name in ("config.json", ADAPTER_CONFIG_NAME)
    )


def _remember_commit(repo_id: str, revision: str | None, commit: str, cache_dir: str | None) -> None:
    """Record in the Hub cache that `revision` (default: the main branch) is `commit`, as huggingface_hub's own
    downloads by branch name do: files fetched by commit alone would not be found by name offline otherwise."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(cache_dir or constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"))
    ref = ref / "refs" / (revision or constants.DEFAULT_REVISION)
    try:  # best effort, as huggingface_hub's: the cache may be read-only
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    except OSError:
        pass


def _near_miss(name: str) -> str:
    """`"; did you mean sam-hf-tiny?"` when `name` is a near miss of a shipped model name, else `""`."""
    close = difflib.get_close_matches(name.removeprefix("sam_hf/"), SHIPPED_MODELS, n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close else ""


def _hub_adapter_base(repo_id: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Base model named by a Hub repo's `adapter_config.json`; None for a model repo."""
    from transformers.utils.hub import cached_file

    try:
        file = cached_file(
            repo_id, ADAPTER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
    except OSError as error:
        raise ValueError(
            f"{repo_id!r} is neither a local file or folder, nor a shipped model, nor a reachable Hub repo "
            f"({type(error).__name__}); {_EXPECTED}"
        ) from error
    return None if file is None else adapter_base_model(Path(file).parent)


def _downloaded_adapter(repo_id: str, hub_kwargs: dict[str, Any]) -> str:
    """Local folder of a Hub adapter's config and weights (PEFT's own download ignores `local_files_only`)."""
    from transformers.utils.hub import cached_file

    config = cached_file(repo_id, ADAPTER_CONFIG_NAME, **hub_kwargs)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        if cached_file(repo_id, weights, _raise_exceptions_for_missing_entries=False, **hub_kwargs):
            break
    return str(Path(config).parent)


def _processor(
    source: str | ResolvedCheckpoint, config: Any, hub_kwargs: dict[str, Any] | None = None
) -> SamHFProcessor | None:
    """The processor saved at `source` (a folder or Hub repo, or the checkpoint found there); else one matching
    `config`, else None."""
    location = source.source if isinstance(source, ResolvedCheckpoint) else source
    if not os.path.isfile(location) and (not os.path.isdir(location) or _has_processor_config(location)):
        try:
            return SamHFProcessor.from_pretrained(source, **(hub_kwargs or {}))
        except FileNotFoundError:
            pass
    return None if config is None else SamHFProcessor.from_model_config(config)


def _has_processor_config(folder: str) -> bool:
    return any(
        os.path.isfile(os.path.join(folder, name))
        for name in (PROCESSOR_CONFIG_NAME, "processor_config.json")
    )
