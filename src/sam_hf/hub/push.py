"""Hub uploads of fine-tuned SamHF models: one guarded commit with weights, processor config, results, card.

`push_to_hub` stages the folder's top-level weights, configs and results, the source files its configs' `auto_map`
names (so the repo loads with `trust_remote_code=True`) and the processor in a temporary folder, adds the card
(unless the folder holds a README the user wrote, which is uploaded unchanged), and sends everything in one
`create_commit` whose `parent_commit` is the branch head read just before, so a branch that moved in the
meantime makes the push fail instead of interleaving commits. The token comes from huggingface_hub's usual
places (`HF_TOKEN`, saved login) and is never printed or written. Run records are published with local paths
reduced to their last component, as the card names them. An adapter whose base model is a local file is pushed
with a warning (the card says it too): the base does not travel with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token

from ..processing_sam_hf import PROCESSOR_CONFIG_NAME
from ..remote_code import remote_code_files
from .cards import build_model_card, is_generated_card, local_base_note, public_name
from .loading import ADAPTER_CONFIG_NAME, adapter_base_model, load_model, load_processor
from .saving import save_model

__all__ = ["HubPushError", "PushResult", "build_commit_operations", "push_to_hub"]

# Top-level files worth publishing: weights, configs, results and the card. Pickles (training_args.bin,
# optimizer states) and checkpoint folders stay local.
_UPLOAD_SUFFIXES = (".safetensors", ".json", ".md", ".txt")


class HubPushError(RuntimeError):
    """An upload failed; the local folder is unchanged and the message says how to retry."""


@dataclass
class PushResult:
    """What `push_to_hub` uploaded (or, with `dry_run`, would upload).

    Args:
        repo_id: target repository.
        files: `(path_in_repo, size_in_bytes)` of every file in the commit.
        revision: target branch (`None` = the default branch).
        commit_url: URL of the commit (`None` on a dry run).
        pr_url: URL of the pull request when `create_pr` was set.
    """

    repo_id: str
    files: list[tuple[str, int]] = field(default_factory=list)
    revision: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None


def build_commit_operations(
    folder: str | Path, staging_dir: str | Path, repo_id: str | None = None, merge_adapter: bool = False
) -> list[CommitOperationAdd]:
    """Copy what should be published from `folder` into `staging_dir`, add the card, list the operations.

    Args:
        folder: output folder to publish (left untouched).
        staging_dir: empty temporary folder; the operations read their files from it, so keep it until the
            commit is done.
        repo_id: target repository, for the card.
        merge_adapter: publish the adapter merged into its base model (`config.json` + `model.safetensors`)
            instead of the adapter files.

    Returns:
        One `CommitOperationAdd` per staged file, sorted by path in the repository.
    """
    folder, staging_dir = Path(folder), Path(staging_dir)
    is_adapter = (folder / ADAPTER_CONFIG_NAME).is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        raise ValueError(
            f"folder must hold a PEFT adapter (adapter_config.json) or a model (config.json), got {folder}"
        )
    if merge_adapter and not is_adapter:
        raise ValueError(f"merge_adapter needs an adapter folder (adapter_config.json), got {folder}")
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _UPLOAD_SUFFIXES:
            if not (merge_adapter and path.name.startswith("adapter_")):
                shutil.copy2(path, staging_dir / path.name)
                if path.suffix == ".json" and path.name != ADAPTER_CONFIG_NAME:
                    _publish_local_paths_by_name(staging_dir / path.name)
    for path in remote_code_files(folder):  # the model and processor source, for `trust_remote_code=True`
        shutil.copy2(path, staging_dir / path.name)
    if merge_adapter:
        model, processor, _ = load_model(folder, merge_adapter=True, verbose=False)
        save_model(model, staging_dir, processor)
    if not (staging_dir / PROCESSOR_CONFIG_NAME).is_file():  # the repo must load with SamHFProcessor alone
        load_processor(folder).save_pretrained(staging_dir)
    readme = staging_dir / "README.md"
    if not readme.is_file() or is_generated_card(readme.read_text(encoding="utf-8")):
        # Ours or a blank auto-card: regenerate from this run's files. Anything else the user wrote: keep it.
        build_model_card(folder, repo_id, merged=merge_adapter).save(readme)
    return [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(staging_dir.iterdir())
    ]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload fine-tuned SAM (sam_hf)",
    merge_adapter: bool = False,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> PushResult:
    """Upload an adapter or model folder with its processor config, results and card in one commit.

    Args:
        folder: output folder of a run (`sam-hf finetune`), left untouched whatever happens.
        repo_id: target repository (`name` or `namespace/name`); created if missing.
        private: visibility when the repository is created (`None`: the account's default).
        branch: target branch, created from the default branch if missing (`None`: the default branch).
        create_pr: open a pull request against `branch` instead of committing to it.
        commit_message: message of the commit.
        merge_adapter: upload the adapter merged into its base model instead of the adapter.
        dry_run: only stage and report what would be uploaded; no network, no token needed.
        api: Hub client (default: `HfApi()` with the token from `HF_TOKEN` or the saved login).

    Returns:
        A `PushResult` listing the files and, unless `dry_run`, the commit (and PR) URL.

    Raises:
        HubPushError: the upload failed; the message names the cause and how to retry.
    """
    note = local_base_note(adapter_base_model(folder)) if not merge_adapter else ""
    if note:
        warnings.warn(f"{note} Push with merge_adapter=True (--merge) to publish a full model.", stacklevel=2)
    with tempfile.TemporaryDirectory(prefix="sam_hf_push_") as staging:
        operations = build_commit_operations(folder, staging, repo_id, merge_adapter=merge_adapter)
        files = [(op.path_in_repo, Path(op.path_or_fileobj).stat().st_size) for op in operations]
        result = PushResult(repo_id=repo_id, files=files, revision=branch)
        if dry_run:
            return result
        api = api or HfApi()
        _refuse_files_with_token(operations, getattr(api, "token", None) or get_token())
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
            if branch is not None:
                api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
            head = api.repo_info(repo_id, revision=branch, repo_type="model").sha
            commit = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                revision=branch,
                create_pr=create_pr,
                parent_commit=head,
                repo_type="model",
            )
        except Exception as error:
            flags = (
                [f"--branch {branch}"] * bool(branch)
                + ["--create-pr"] * create_pr
                + ["--merge"] * merge_adapter
            )
            raise HubPushError(
                f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {error}). Nothing local was "
                f"changed. If the branch moved during the push, the commit was refused on purpose. "
                f"Retry with: sam-hf push {folder} --repo-id {repo_id} {' '.join(flags)}".rstrip()
            ) from error
    result.repo_id = repo_id
    result.commit_url = commit.commit_url
    result.pr_url = commit.pr_url
    return result


def _publish_local_paths_by_name(path: Path) -> None:
    """Rewrite a staged run record (summary, eval results, run config) so that every absolute local path in it
    reads as the card writes it (`public_name`). The adapter config keeps its base path: the warning and the
    card say that base must travel with the adapter."""

    def public(value):
        if isinstance(value, dict):
            return {key: public(item) for key, item in value.items()}
        if isinstance(value, list):
            return [public(item) for item in value]
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
            return public_name(value)
        return value

    record = json.loads(path.read_text(encoding="utf-8"))
    published = public(record)
    if published != record:
        path.write_text(json.dumps(published, indent=2) + "\n", encoding="utf-8")


def _refuse_files_with_token(operations: list[CommitOperationAdd], token: str | None) -> None:
    """Never publish a file that contains the user's token (e.g. a config that captured it)."""
    if not token:
        return
    for op in operations:
        if token.encode() in Path(op.path_or_fileobj).read_bytes():
            raise HubPushError(
                f"refusing to upload {op.path_in_repo}: it contains your Hub token; remove it and retry"
            )
