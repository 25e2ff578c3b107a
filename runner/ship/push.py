"""`runner push RUN_DIR --repo NAME [--private] [--merged] [--dry-run] [--revision BRANCH]`: a
finished run on the Hugging Face Hub, through huggingface_hub (create_repo, then one
create_commit of every file).

What is uploaded: the adapter (or, with --merged, the merged weights: the run's merged/ folder,
or a merge into a temporary folder when it has none), the tokenizer with the chat template that
carries the training system prompt (runner.ship.prompt), a model card (runner.ship.card),
config.yaml and plan.json with local paths shown as `<local>/NAME`, and loss.png / metrics.jsonl.
Never checkpoints, training_args.bin (a pickle) or runner's markers. adapter_config.json names
the base model by its hub id, so that AutoPeftModelForCausalLM loads it anywhere.

Before anything leaves, every byte is scanned (runner.ship.scan): a secret or a local path
refuses the upload, naming file and line. The token comes from huggingface_hub's own sources
(HF_TOKEN, or `hf auth login` / `huggingface-cli login`), never from the run's config.
`--dry-run` prints the files (path, size) and the card, and touches no network."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

SKIPPED_TOKENIZER = {"chat_template.json"}  # superseded by chat_template.jinja


@dataclass(frozen=True)
class Upload:
    path: str            # in the repo
    source: Path | bytes  # a local file (weights, uploaded as they are) or the bytes to upload

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--repo", required=True, help="the Hub repository: NAME or OWNER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--merged", action="store_true",
                        help="upload the merged model (RUN_DIR/merged, or a merge made now) instead of the adapter")
    parser.add_argument("--revision", default=None, help="the branch to commit to (created if missing; default main)")
    parser.add_argument("--base-model", default=None,
                        help="the base model's hub id, when runner cannot tell (a base from a local folder)")
    parser.add_argument("--license", default=None,
                        help="the card's license (default: the base model's, where its files say; else 'other')")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded and the card; no network")


def run(args) -> int:
    from runner.quiet import quiet_for_run_dir

    quiet_for_run_dir(args.run_dir, getattr(args, "debug", False))
    _check_repo_id(args.repo)
    token = None if args.dry_run else hub_token()
    with tempfile.TemporaryDirectory(prefix="runner-push-") as scratch:
        uploads, card = collect(args.run_dir, merged=args.merged, repo=args.repo, base_model=args.base_model,
                                license=args.license, scratch=Path(scratch))
        refuse_leaks(args.run_dir, uploads, token)
        if args.dry_run:
            print_listing(uploads, card, args)
            return 0
        url = upload(uploads, token, repo=args.repo, private=args.private, revision=args.revision,
                     message=f"runner push: {Path(args.run_dir).name}" + (" (merged)" if args.merged else ""))
    print(f"pushed {len(uploads)} files: {url}", file=sys.stderr)
    return 0


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, else the token `hf auth login` stored
    if not token:
        raise UserError("no Hugging Face token: runner push reads it from HF_TOKEN or from huggingface_hub's login",
                        where="HF_TOKEN",
                        hint="run `huggingface-cli login` (or `hf auth login`), or set HF_TOKEN to a token with write "
                             "access; a token in the run's config is never used for uploads")
    return token


def _check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise UserError(f"--repo {repo!r} is not a Hub repository name: {err}", where="--repo",
                        hint="NAME or OWNER/NAME: letters, digits, '-', '_', '.'") from None


def finished_run(run_dir: Path):
    from runner.rundir import RUN_MARKER
    from runner.ship.merge import load_run_plan

    plan = load_run_plan(run_dir)
    if not (run_dir / RUN_MARKER).is_file():
        raise UserError(f"{run_dir} is not a finished run (no {RUN_MARKER})", where=str(run_dir),
                        hint="finish the run first: run the same `runner train` command again to resume it")
    return plan


def collect(run_dir, *, merged: bool, repo: str, base_model: str | None, license: str | None,
            scratch: Path) -> tuple[list[Upload], str]:
    """(the files to upload, the card's text)."""
    from runner.ship.card import Card, card_text, run_summary
    from runner.ship.scan import local_folders
    from runner.train.card import base_model_id

    run_dir = Path(run_dir)
    plan = finished_run(run_dir)
    folders = local_folders(run_dir, plan)
    is_adapter = (run_dir / "adapter_config.json").is_file()
    if merged and not is_adapter:
        raise UserError(f"{run_dir} holds a full model, not an adapter: there is nothing to merge",
                        where="--merged", hint="push it without --merged")
    written = str(plan.config["model"]["path"] or plan.model.path)
    base_id = base_model or base_model_id(plan.model, written)
    kind = "merged" if merged else ("adapter" if is_adapter else "full")
    if kind == "adapter" and not base_id:
        raise UserError(f"the base model of {run_dir} is a local folder ({Path(plan.model.path).name}) with no hub id "
                        "that runner knows: adapter_config.json would name a path on this machine",
                        where="--base-model",
                        hint="pass --base-model OWNER/NAME (the hub repo the base came from), or push --merged")
    weights_dir = merged_folder(run_dir, scratch) if merged else run_dir
    uploads = weight_files(weights_dir, kind, base_id, folders)
    uploads += tokenizer_files(weights_dir, plan, scratch / "tokenizer", folders)
    weights = tuple((u.path, u.source) for u in uploads if u.path.endswith(".safetensors"))
    card = card_text(plan, Card(kind, repo, weights, license=license, base_id=base_id), run_summary(run_dir))
    uploads.append(Upload("README.md", card.encode()))
    uploads += run_files(run_dir, plan, folders)
    return sorted(uploads, key=lambda u: u.path), card


def merged_folder(run_dir: Path, scratch: Path) -> Path:
    """The run's merged/ folder when runner's merge finished it (its card is written last), else a
    merge made now into the scratch folder."""
    folder = run_dir / "merged"
    if (folder / "README.md").is_file() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    from runner.ship.merge import merge_run

    print(f"{run_dir} has no merged/ folder: merging into a temporary folder", file=sys.stderr)
    return merge_run(run_dir, scratch / "merged")


def weight_files(folder: Path, kind: str, base_id: str | None, folders) -> list[Upload]:
    from runner.ship.scan import local_path_free

    out = []
    if kind == "adapter":
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_id  # loadable anywhere; the card says which weights
        config = local_path_free(config, folders)
        out.append(Upload("adapter_config.json", _json_bytes(config)))
        out += [Upload(p.name, p) for p in sorted(folder.glob("adapter_model*.safetensors"))]
        return out
    out += [Upload(p.name, p) for p in sorted(folder.glob("model*.safetensors"))]
    for name in ("config.json", "generation_config.json", "model.safetensors.index.json"):
        if (folder / name).is_file():
            out.append(Upload(name, _json_bytes(local_path_free(json.loads((folder / name).read_text()), folders))))
    if not out or not any(u.path.endswith(".safetensors") for u in out):
        raise UserError(f"{folder} holds no safetensors weights to upload", where=str(folder),
                        hint="train the run to its end, or run `runner merge RUN_DIR` again")
    return out


def tokenizer_files(folder: Path, plan, scratch: Path, folders) -> list[Upload]:
    """The tokenizer saved again with the shipped template (runs saved before the template
    carried the training defaults get them too)."""
    from transformers import AutoTokenizer

    from runner.ship.prompt import save_tokenizer
    from runner.ship.scan import local_path_free

    save_tokenizer(AutoTokenizer.from_pretrained(folder), plan, scratch)
    out = []
    for path in sorted(scratch.iterdir()):
        if path.name in SKIPPED_TOKENIZER:
            continue
        if path.name == "tokenizer_config.json":
            out.append(Upload(path.name, _json_bytes(local_path_free(json.loads(path.read_text()), folders))))
        else:
            out.append(Upload(path.name, path.read_bytes()))
    return out


def run_files(run_dir: Path, plan, folders) -> list[Upload]:
    import yaml

    from runner.ship.scan import local_path_free
    from runner.train.card import shareable_config

    config = "# The resolved config of this run (defaults filled, secrets redacted, local paths shown as <local>/NAME).\n"
    config += yaml.safe_dump(local_path_free(shareable_config(plan.config), folders), sort_keys=False,
                             allow_unicode=True)
    out = [Upload("config.yaml", config.encode()),
           Upload("plan.json", _json_bytes(local_path_free(json.loads((run_dir / "plan.json").read_text()), folders)))]
    out += [Upload(name, run_dir / name) for name in ("loss.png", "metrics.jsonl") if (run_dir / name).is_file()]
    return out


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def refuse_leaks(run_dir, uploads: list[Upload], token: str | None) -> None:
    from runner.ship.merge import load_run_plan
    from runner.ship.scan import local_folders, scan, secret_values

    folders = local_folders(run_dir, load_run_plan(Path(run_dir)))
    secrets = secret_values([token] if token else [])
    found = [f for u in uploads for f in scan(u.path, u.read(), folders=folders, secrets=secrets)]
    if found:
        listing = "\n  ".join(str(f) for f in found[:20]) + (f"\n  ... {len(found) - 20} more" if len(found) > 20 else "")
        raise UserError(f"refusing to upload: {len(found)} place(s) hold a secret or a local path:\n  {listing}",
                        where=str(found[0]),
                        hint="remove them from the run directory's files (the values are not shown here); "
                             "runner writes none of these itself, so please report one that it did")


def print_listing(uploads: list[Upload], card: str, args) -> None:
    target = f"{args.repo}" + (f"@{args.revision}" if args.revision else "") + (" (private)" if args.private else "")
    print(f"would upload to {target}:")
    width = max(len(u.path) for u in uploads)
    for u in uploads:
        print(f"  {u.path:<{width}}  {_size(u.size):>9}")
    print(f"  {len(uploads)} files, {_size(sum(u.size for u in uploads))}")
    print("\nREADME.md:\n")
    print(card)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def upload(uploads: list[Upload], token: str, *, repo: str, private: bool, revision: str | None, message: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=u.path,
                                     path_or_fileobj=u.source if isinstance(u.source, bytes) else str(u.source))
                  for u in uploads]
    try:
        repo_id = api.create_repo(repo, private=private, exist_ok=True, repo_type="model").repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision)
    except Exception as err:  # huggingface_hub's HTTP errors, offline mode, a network that cannot be reached
        raise hub_error(err, repo) from None
    return commit.commit_url


def hub_error(err: Exception, repo: str) -> UserError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return UserError("HF_HUB_OFFLINE is set: runner push needs the network", where="HF_HUB_OFFLINE",
                         hint="unset HF_HUB_OFFLINE, or look at what would be uploaded with --dry-run")
    status = getattr(getattr(err, "response", None), "status_code", None) if isinstance(err, HfHubHTTPError) else None
    if status in (401, 403):
        return UserError(f"the Hub refused the token for {repo} (HTTP {status})", where="HF_TOKEN",
                         hint="use a token with write access to this namespace: `huggingface-cli login` or HF_TOKEN")
    from huggingface_hub import constants

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"the upload to {repo} failed: {first}", where=constants.ENDPOINT,
                     hint="check the network and the repository name, then run the same command again "
                          "(the commit is all or nothing)")
