"""A stage-rm run directory as a scorer: loaded (`load_reward_model`), scoring token sequences
(`score`), and `runner eval RUN_DIR` on it: pairwise accuracy (chosen scored above rejected) on the
run's eval split, written to RUN_DIR/eval/pairwise.json, printed, and put in the model card.

lm-evaluation-harness scores language models; a reward model has a score head and no LM head, so
its benchmark is the preference pairs themselves, rebuilt by runner's own pipeline exactly as
training saw them (same template, same truncation)."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

RESULT = "pairwise.json"
CARD_HEADING = "## Pairwise accuracy"


@dataclass
class RewardModel:
    model: object        # a *ForSequenceClassification model (PeftModel with an adapter), eval mode
    tokenizer: object    # the run's tokenizer, with the chat template it trained with
    plan: object         # the run's Plan


def is_reward_run(plan) -> bool:
    from runner.train import stages

    return stages.get(plan.training.stage).auto_class == "AutoModelForSequenceClassification"


def refuse_generation(plan, run_dir, command: str) -> None:
    """Commands that load a run as a language model (generate, chat, serve, merge, export) refuse a
    reward model: its adapter on a causal LM would load without its score head and write nonsense."""
    if plan is not None and is_reward_run(plan):
        raise UserError(f"{run_dir} is a reward model (stage rm): it scores sequences and does not generate text, "
                        f"so `runner {command}` cannot use it", where=str(run_dir),
                        hint="`runner eval RUN_DIR` reports its pairwise accuracy; load it with "
                             "runner.evaluate.reward_model.load_reward_model or AutoModelForSequenceClassification "
                             "(docs/rl.md)")


def load_reward_model(run_dir, plan=None, *, device: str | None = None) -> RewardModel:
    """A finished stage-rm run: its base loaded as a one-label sequence classifier in the dtype it
    trained in, the adapter (with the trained score head) applied, or the full weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.evaluate.harness import run_dtype
    from runner.train.model import attn_for_transformers, load_model, torch_dtype

    run_dir = Path(run_dir)
    if plan is None:
        from runner.evaluate.command import finished_run_plan

        plan = finished_run_plan(run_dir)
    if not is_reward_run(plan):
        raise UserError(f"{run_dir} was trained with stage {plan.training.stage}, not rm: it has no score head",
                        where=str(run_dir), hint="point at the output.dir of a `training.stage: rm` run")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    dtype = run_dtype(plan)
    attention = plan.runtime.attn_implementation if plan.runtime else plan.model.attn_implementation
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_model(plan, dtype=dtype, attn_implementation=attention, for_training=False,
                          auto_class="AutoModelForSequenceClassification")
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, run_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            run_dir, dtype=torch_dtype(dtype), attn_implementation=attn_for_transformers(attention, False))
    # The score is read at the last token that is not padding: the model finds it by pad_token_id.
    model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return RewardModel(model, tokenizer, plan)


def score(reward: RewardModel, sequences: list[list[int]], batch_size: int = 8) -> list[float]:
    """One scalar per token sequence (higher: preferred). Right-padded batches; no gradients."""
    import torch

    model, pad = reward.model, reward.tokenizer.pad_token_id
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, seq in enumerate(batch):
                ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out += logits[:, 0].float().cpu().tolist()
    return out


def pairwise(reward: RewardModel, rows, batch_size: int = 8) -> dict:
    """Accuracy (chosen scored strictly above rejected) and mean margin over pipeline preference rows
    (prompt_input_ids, chosen_input_ids, rejected_input_ids)."""
    chosen = [list(r["prompt_input_ids"]) + list(r["chosen_input_ids"]) for r in rows]
    rejected = [list(r["prompt_input_ids"]) + list(r["rejected_input_ids"]) for r in rows]
    good, bad = score(reward, chosen, batch_size), score(reward, rejected, batch_size)
    wins = sum(g > b for g, b in zip(good, bad))
    n = len(good)
    return {"pairs": n, "accuracy": wins / n if n else None,
            "margin": sum(g - b for g, b in zip(good, bad)) / n if n else None}


def evaluate_run(run_dir: Path, plan, *, out: Path, limit: float | None, batch_size: int) -> dict:
    """`runner eval RUN_DIR` for a reward model: pairwise accuracy on the run's eval split (the
    training pairs when the run has none, said so), written to out/pairwise.json and the card."""
    from runner import data as pipeline
    from runner.rundir.layout import write_json

    reward = load_reward_model(run_dir, plan)
    prepared = pipeline.build_datasets(plan, pipeline.load_tokenizer(plan))
    split, rows = ("eval", prepared.eval) if prepared.eval is not None and len(prepared.eval) else ("train", prepared.train)
    if split == "train":
        _say("note: the run has no eval split (eval_datasets or val_size): scoring its training pairs")
    if limit is not None:
        rows = rows.select(range(min(len(rows), int(limit) if limit >= 1 else max(1, int(len(rows) * limit)))))
    _say(f"scoring {len(rows)} {split} pair{'s' * (len(rows) != 1)} with the reward model")
    result = {"split": split, **pairwise(reward, rows, batch_size), "limit": limit,
              "plan_hash": plan.hashes.plan, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT, result)
    update_card(run_dir, result)
    print(format_result(result))
    _say(f"results: {out / RESULT}")
    return result


def format_result(result: dict) -> str:
    rows = [("split", "pairs", "pairwise accuracy", "mean margin"),
            (result["split"], str(result["pairs"]), _num(result["accuracy"]), _num(result["margin"]))]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def update_card(run_dir: Path, result: dict) -> bool:
    """README.md's pairwise-accuracy section added or replaced; the rest of the card kept."""
    from runner.rundir.layout import write_text_atomic

    path = Path(run_dir) / "README.md"
    if not path.is_file():
        return False
    limited = f", limit {result['limit']}" if result.get("limit") is not None else ""
    section = (f"{CARD_HEADING}\n\nScored by `runner eval` on the {result['split']} split ({result['pairs']} pairs"
               f"{limited}): chosen scored above rejected in **{_num(result['accuracy'])}** of pairs, mean margin "
               f"{_num(result['margin'])}.\n\n")
    text = path.read_text()
    found = re.search(rf"^{re.escape(CARD_HEADING)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if found:
        text = text[:found.start()] + section + text[found.end():]
    else:
        anchor = re.search(r"^## Hashes\n", text, flags=re.M)
        text = (text[:anchor.start()] + section + text[anchor.start():]) if anchor else text.rstrip() + "\n\n" + section
    write_text_atomic(path, text)
    return True


def _num(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _say(message: str) -> None:
    print(message, file=sys.stderr)
