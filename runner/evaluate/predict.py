"""`runner predict RUN_DIR`: answer a set of prompts with a finished run and score the answers
against their references (exact match, BLEU, ROUGE-L: runner.evaluate.scores).

The prompts come from a dataset file in any format runner reads (`--data FILE`, read with the
run's format, column mapping, substitutions and system prompt unless `--format` names another
format) or from the run's own eval split (`--split eval`, the default when the run has one). Each
row's last assistant turn (an instruction row's output, a preference row's chosen answer) is its
reference; everything before it is the prompt, rendered with the chat template the run trained
with. A row without an answer is answered too; metrics count only the rows with a reference, and
metrics.json says how many had none.

Generation is greedy, batched with left padding, in eval mode with the KV cache. predictions.jsonl
(origin, prompt, reference, prediction and the row's scores) and metrics.json are written whole or
not at all, into RUN_DIR/predict/ or beside `-o FILE`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
PREDICTION_KEYS = {"origin", "prompt", "reference", "prediction"}


@dataclass
class Prompt:
    messages: list           # the conversation up to the answer
    tools: list | None
    reference: str | None    # the answer in the data, or None
    origin: str              # file:line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from runner.data.formats import FIELDS

    parser.add_argument("run_dir", help="a finished run directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="FILE", help="a dataset file or folder (json, jsonl, csv, parquet)")
    source.add_argument("--split", choices=["eval"], help="the run's eval split (default when it has one)")
    parser.add_argument("--format", choices=sorted(FIELDS), default=None,
                        help="the format of --data (default: the run's dataset format and column mapping)")
    parser.add_argument("--max-new-tokens", type=_positive, default=256)
    parser.add_argument("--batch-size", type=_positive, default=8, help="prompts generated together (default 8)")
    parser.add_argument("--limit", type=_positive, default=None, help="only the first N rows")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="write predictions here (metrics beside it, NAME.metrics.json); "
                             "default RUN_DIR/predict/predictions.jsonl")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args) -> int:
    from runner.quiet import quiet_for_run_dir
    from runner.ship.merge import load_run_plan

    run_dir = finished_run(args.run_dir)
    plan = load_run_plan(run_dir)
    predictions_path, metrics_path = output_paths(run_dir, args.output)
    prompts, source = read_prompts(plan, args.data, args.format, args.split)
    if args.limit:
        prompts = prompts[:args.limit]
    quiet_for_run_dir(run_dir, getattr(args, "debug", False))
    from runner.serve.generate import load_for_generation

    model, tokenizer, _ = load_for_generation(run_dir)
    texts = [render(tokenizer, plan, p) for p in prompts]
    answers, unfinished = generate(model, tokenizer, texts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size)
    rows, metrics = score_rows(prompts, texts, answers)
    metrics.update(run=plan.name, plan_hash=plan.hashes.plan, data=source,
                   generation={"decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                               "batch_size": args.batch_size, "hit_max_new_tokens": unfinished},
                   versions=_versions())
    write_outputs(predictions_path, metrics_path, rows, metrics)
    print_summary(metrics, predictions_path, metrics_path)
    if unfinished:
        print(f"warning: {unfinished} of {len(rows)} answers stopped at --max-new-tokens {args.max_new_tokens} "
              "before the end-of-turn token; raise it if answers are cut", file=sys.stderr)
    return 0


def finished_run(run_dir) -> Path:
    from runner.rundir import RUN_MARKER

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{run_dir} is not a directory", where=str(run_dir), hint="pass a run's output.dir")
    if not (path / RUN_MARKER).is_file():
        raise UserError(f"{run_dir} holds no finished run (no {RUN_MARKER})", where=str(run_dir),
                        hint="finish training first: `runner train CONFIG` resumes it from its last checkpoint")
    return path


def output_paths(run_dir: Path, output: str | None) -> tuple[Path, Path]:
    """(predictions, metrics). An existing -o file is replaced only when it is runner's own
    predictions file: never a file runner did not write."""
    if output is None:
        folder = run_dir / "predict"
        return folder / PREDICTIONS, folder / METRICS
    path = Path(output)
    if path.is_dir():
        raise UserError(f"-o {output} is a directory", where=output, hint=f"name a file, e.g. {path / PREDICTIONS}")
    if path.exists() and not _is_predictions_file(path):
        raise UserError(f"{output} exists and is not a predictions file written by runner predict", where=output,
                        hint="choose another file name, or move that file away")
    return path, path.with_name(f"{path.stem}.metrics.json")


def _is_predictions_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(first, dict) and PREDICTION_KEYS <= set(first)


def read_prompts(plan, data_file: str | None, fmt: str | None, split: str | None) -> tuple[list[Prompt], dict]:
    """The prompts and where they came from (for metrics.json)."""
    if data_file is None:
        from runner.data.build import eval_items

        items = eval_items(plan)
        if not items:
            raise UserError(f"run {plan.name} has no eval split (no eval_datasets, val_size 0)",
                            where="--split eval" if split else None, hint="pass the prompts with --data FILE")
        return [to_prompt(i.row, i.origin) for i in items], {"source": "eval split"}
    entry = data_entry(plan, data_file, fmt)
    from runner.data.readers import load_rows

    loaded = load_rows(entry, need_answer=False)
    prompts = [to_prompt(row, origin) for row, origin in zip(loaded.rows, loaded.origins)]
    return prompts, {"source": "file", "path": entry["path"], "format": entry["format"]}


def data_entry(plan, data_file: str, fmt: str | None) -> dict:
    """A datasets[] entry for --data: the run's entry for that file when it trained on it, else its
    first dataset's format, mapping, substitutions and system prompt (a format of another name
    keeps only the substitutions and the system prompt)."""
    from runner.plan.sections import to_dict

    path = Path(data_file).expanduser().resolve()
    if not path.exists():
        raise UserError(f"dataset file not found: {data_file}", where="--data")
    if path.is_file() and path.suffix.lower() not in (".json", ".jsonl", ".csv", ".parquet"):
        raise UserError(f"cannot read prompts from {path.name}", where="--data",
                        hint="json, jsonl, csv or parquet files (or a folder of them)")
    entries = [to_dict(d) for d in plan.data.datasets]
    base = next((d for d in entries if Path(d["path"]) == path), entries[0])
    entry = {**base, "path": str(path), "type": "auto", "num_samples": None, "weight": 1.0, "on_bad_row": "error"}
    if fmt and fmt != base["format"]:
        entry.update(format=fmt, columns={}, roles={})
    if entry.get("system") is None:
        entry["system"] = plan.data.template.system_prompt
    return entry


def to_prompt(row: dict, origin: str) -> Prompt:
    """A normalised row as a prompt and its reference: the chosen answer of a preference row, the
    last assistant turn of a conversation ending with one (a kto row's only when desirable)."""
    messages, tools = list(row["messages"]), row.get("tools")
    if "text" in row:
        raise UserError(f"{origin}: a text row has no prompt to answer", where=origin,
                        hint="runner predict reads instruction, conversation or preference formats (--format)")
    answer = None
    if "chosen" in row:
        answer = row["chosen"]
    elif messages and messages[-1]["role"] == "assistant":
        answer = messages.pop()
        if row.get("label") is False:
            answer = None  # kto: an undesirable answer is no reference
    if not messages or messages[-1]["role"] == "system":
        raise UserError(f"{origin}: the row has no prompt before its answer", where=origin)
    reference = answer["content"] if answer and answer["content"].strip() else None
    return Prompt(messages, tools, reference, origin)


def render(tokenizer, plan, prompt: Prompt) -> str:
    """The prompt as the model saw such prompts in training: the run's saved chat template, ending
    with the assistant header the answer continues."""
    kwargs = {}
    if plan.data.template.enable_thinking is not None:
        kwargs["enable_thinking"] = plan.data.template.enable_thinking
    if prompt.tools:
        kwargs["tools"] = prompt.tools
    return tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False, **kwargs)


def generate(model, tokenizer, texts: list[str], *, max_new_tokens: int, batch_size: int) -> tuple[list[str], int]:
    """Greedy answers to rendered prompts, in their order, and how many hit max_new_tokens. Prompts
    are batched by length (less padding), left-padded so every answer starts at the same column."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop = _eos_ids(model, tokenizer)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(texts)
    unfinished = 0
    bar = tqdm(total=len(texts), desc="predict", unit="row", file=sys.stderr, disable=not sys.stderr.isatty())
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chosen]}, return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop))
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        for i, tokens in zip(chosen, new):
            ended = next((n for n, t in enumerate(tokens) if t in stop), None)
            unfinished += ended is None
            # An answer cut at max_new_tokens may end inside a character's bytes: drop the half.
            answers[i] = tokenizer.decode(tokens[:ended], skip_special_tokens=True).rstrip("\ufffd").strip()
        bar.update(len(chosen))
    bar.close()
    return answers, unfinished


def _eos_ids(model, tokenizer) -> set[int]:
    """The model's end tokens (its generation config may list several, e.g. end-of-turn and eos)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def score_rows(prompts: list[Prompt], texts: list[str], answers: list[str]) -> tuple[list[dict], dict]:
    from runner.evaluate.scores import score

    scored = [i for i, p in enumerate(prompts) if p.reference is not None]
    result = score([(prompts[i].reference, answers[i]) for i in scored])
    per_row = dict(zip(scored, result.pop("rows")))
    rows = [{"origin": p.origin, "prompt": text, "reference": p.reference, "prediction": answer, **per_row.get(i, {})}
            for i, (p, text, answer) in enumerate(zip(prompts, texts, answers))]
    metrics = {"rows": len(rows), "scored_rows": len(scored), "rows_without_reference": len(rows) - len(scored),
               "scale": "0-100 over the rows with a reference",
               "exact_match_rule": "equal after removing surrounding whitespace and joining inner whitespace",
               "language_rule": "per row, from the reference's script (zh, ja, ko: scored by characters)",
               **result}
    return rows, metrics


def write_outputs(predictions_path: Path, metrics_path: Path, rows: list[dict], metrics: dict) -> None:
    from runner.rundir import write_json, write_text_atomic

    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json(metrics_path, metrics)


def print_summary(metrics: dict, predictions_path: Path, metrics_path: Path) -> None:
    if metrics["scored_rows"]:
        print(f"exact match {metrics['exact_match']:.2f}  BLEU {metrics['bleu']:.2f}  ROUGE-L {metrics['rouge_l']:.2f}"
              f"  ({metrics['scored_rows']} rows with a reference"
              + (f", {metrics['rows_without_reference']} without" if metrics["rows_without_reference"] else "") + ")")
    else:
        print(f"no row has a reference: {metrics['rows']} predictions, no metrics")
    print(f"wrote {predictions_path} and {metrics_path}", file=sys.stderr)


def _versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("sacrebleu", "rouge-score")}
