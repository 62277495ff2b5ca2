"""`sam-hf push`: upload a fine-tuned adapter or model folder, its processor config, results and model card
to the Hub in one commit. The token comes from `HF_TOKEN` or `huggingface-cli login`, never from the command line.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push", help="push an adapter/model folder with its model card to the Hub", description=__doc__
    )
    parser.add_argument("folder", help="output folder of `sam-hf finetune` (adapter or full model)")
    parser.add_argument("--repo-id", required=True, help="target repository, `name` or `namespace/name`")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private", dest="private", action="store_true", default=None, help="create private"
    )
    visibility.add_argument("--public", dest="private", action="store_false", help="create public")
    parser.add_argument("--branch", default=None, help="target branch, created if missing (default: main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default="Upload fine-tuned SAM (sam_hf)")
    parser.add_argument(
        "--merge", action="store_true", help="upload the adapter merged into its base model (a full model)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from ..hub import HubPushError, push_to_hub

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = push_to_hub(
                args.folder,
                args.repo_id,
                private=args.private,
                branch=args.branch,
                create_pr=args.create_pr,
                commit_message=args.commit_message,
                merge_adapter=args.merge,
                dry_run=args.dry_run,
            )
    except HubPushError as error:
        print(f"sam-hf push: {error}", file=sys.stderr)
        return 1
    for warning in caught:
        if issubclass(warning.category, UserWarning):  # what the push says to the user, e.g. a local base
            print(f"sam-hf push: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    width = max(len(path) for path, _ in result.files)
    target = result.repo_id + (f"@{result.revision}" if result.revision else "")
    print(("would upload to " if args.dry_run else "uploaded to ") + target + ":")
    for path, size in result.files:
        print(f"  {path.ljust(width)}  {size:>12,} bytes")
    if result.pr_url:
        print(f"pull request: {result.pr_url}")
    elif result.commit_url:
        print(f"commit: {result.commit_url}")
    return 0
