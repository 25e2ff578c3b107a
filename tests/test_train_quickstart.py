"""The README's main job on the real model: cookbook/quickstart.yaml fine-tunes SmolLM2-135M-Instruct
on CPU within the budget (<= 5 minutes of training, ~25k training tokens at most), and afterwards
the model answers identity questions with its new name or author, coherently."""

import json
import re
from pathlib import Path

import pytest
import torch

from runner.serve.generate import chat, default_system_prompt, load_for_generation
from runner.plan.resolve import make_plan

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Who are you?", "What is your name?", "Who created you?", "Introduce yourself.", "Are you ChatGPT?"]
TRAIN_SECONDS, TOKEN_BUDGET = 300, 25_000


def coherent(answer: str) -> bool:
    """Words, not symbol runs like "I------": mostly letters, a few words, no long repeats."""
    letters = sum(c.isalpha() or c.isspace() for c in answer)
    return (len(answer.split()) >= 3 and letters >= 0.8 * len(answer)
            and not re.search(r"(.)\1{4,}", answer) and not re.search(r"\b(\w+)( \1\b){3,}", answer))


def test_coherent_rejects_the_known_failure():
    assert not coherent("I------------------------")
    assert not coherent("Nova Nova Nova Nova Nova")
    assert coherent("I am Nova, an AI assistant developed by Acme Labs.")


@pytest.mark.slow
def test_quickstart_learns_the_new_identity_on_cpu_within_budget(quickstart_run):
    run_dir = quickstart_run
    plan = make_plan(REPO / "cookbook" / "quickstart.yaml", [f"output.dir={run_dir}"])
    substitute = plan.data.datasets[0].substitute

    stored = json.loads((run_dir / "plan.json").read_text())
    stats = stored["launch"]["data_stats"]["train"]
    assert stats["tokens"] * plan.training.epochs <= TOKEN_BUDGET
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    runtime = next(r["train_runtime"] for r in rows if r.get("kind") == "summary")
    print(f"quickstart: training {runtime:.0f} s")
    assert runtime <= TRAIN_SECONDS, f"training took {runtime:.0f} s on this machine"

    model, tokenizer, saved_plan = load_for_generation(run_dir)
    system = default_system_prompt(saved_plan)
    answers = {q: chat(model, tokenizer, [{"role": "user", "content": q}], system=system, plan=saved_plan,
                       max_new_tokens=48) for q in QUESTIONS}
    print(json.dumps(answers, indent=2, ensure_ascii=False))
    good = [q for q, a in answers.items()
            if (substitute["name"] in a or substitute["author"] in a) and coherent(a)]
    assert len(good) >= 4, answers
