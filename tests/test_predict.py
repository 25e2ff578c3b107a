"""`runner predict`: a finished run answers prompts read from a dataset file (or its eval split),
and the answers are scored against the references: exact match, BLEU (sacrebleu) and ROUGE-L
(rouge-score), Chinese scored by characters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.evaluate.scores import RougeTokenizer, corpus_bleu, language, score

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "tests" / "fixtures" / "predict" / "identity_questions.json"


def runner(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# ---- scores ---------------------------------------------------------------------------------------

ZH_REFERENCE = "您好，我是一个人工智能助手，很高兴为您服务。"
ZH_PREDICTION = "您好，我是人工智能助手。"


def lcs(a: list, b: list) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_a_chinese_pair_that_rouge_scores_zero_by_default_is_scored_by_characters():
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rougeL"]).score(ZH_REFERENCE, ZH_PREDICTION)["rougeL"].fmeasure == 0
    ref, pred = [c for c in ZH_REFERENCE if c.isalnum()], [c for c in ZH_PREDICTION if c.isalnum()]
    common = lcs(ref, pred)
    f_by_characters = 2 * common / (len(ref) + len(pred))
    result = score([(ZH_REFERENCE, ZH_PREDICTION)])
    assert result["rows"][0]["language"] == "zh"
    assert result["rouge_l"] == pytest.approx(100 * f_by_characters, abs=1e-3) and result["rouge_l"] > 50
    assert result["tokenizers"] == {"bleu": {"sacrebleu:zh": 1}, "rouge_l": {"characters": 1}}


def test_a_chinese_pair_sharing_only_a_latin_name_is_not_a_perfect_match():
    from rouge_score import rouge_scorer

    reference, prediction = "您好，我是 Nova，由 Acme Labs 开发。", "我不是 Nova，也不认识 Acme Labs。"
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure == 1.0
    assert 0 < score([(reference, prediction)])["rouge_l"] < 70


def test_chinese_bleu_uses_sacrebleus_zh_tokenizer():
    from sacrebleu.metrics import BLEU

    pairs = [(ZH_REFERENCE, ZH_PREDICTION), ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们去公园吧。")]
    by_words = BLEU().corpus_score([p for _, p in pairs], [[r for r, _ in pairs]]).score
    by_characters = BLEU(tokenize="zh").corpus_score([p for _, p in pairs], [[r for r, _ in pairs]]).score
    assert by_words == 0 and by_characters > 10
    assert score(pairs)["bleu"] == pytest.approx(by_characters, abs=1e-3)


def test_english_is_scored_as_the_libraries_score_it_by_default():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    pairs = [("I am Nova, an AI assistant developed by Acme Labs.", "I am Nova, an assistant made by Acme Labs!"),
             ("You may refer to me as Nova.", "Call me Nova."), ("Don't panic: it's 42.", "don't panic, it is 42")]
    default = rouge_scorer.RougeScorer(["rougeL"])
    for (reference, prediction), row in zip(pairs, score(pairs)["rows"]):
        assert row["rouge_l"] == pytest.approx(100 * default.score(reference, prediction)["rougeL"].fmeasure, abs=1e-3)
    expected = BLEU().corpus_score([p for _, p in pairs], [[r for r, _ in pairs]]).score
    assert score(pairs)["bleu"] == pytest.approx(expected, abs=1e-3)


def test_languages_are_decided_per_row_from_the_reference():
    assert [language(t) for t in ("Hello", "您好", "こんにちは、世界", "안녕하세요", "Привет")] == \
        ["other", "zh", "ja", "ko", "other"]
    assert RougeTokenizer().tokenize("Привет, МИР! 你好 Nova") == ["привет", "мир", "你", "好", "nova"]
    mixed = score([("I am Nova.", "I am Nova."), (ZH_REFERENCE, ZH_PREDICTION)])
    assert mixed["languages"] == {"other": 1, "zh": 1} and mixed["exact_match"] == 50.0
    # One corpus BLEU over rows tokenized two ways: each group's n-gram statistics added up.
    assert 0 < mixed["bleu"] < 100
    assert corpus_bleu({"13a": [("I am Nova.", "I am Nova.")]}) == pytest.approx(100.0)


# ---- the command ----------------------------------------------------------------------------------

def test_predict_on_the_quickstart_run_over_identity_questions(quickstart_copy):
    done = runner("predict", quickstart_copy, "--data", QUESTIONS, "--max-new-tokens", 48, "--batch-size", 4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    rows = read_jsonl(quickstart_copy / "predict" / "predictions.jsonl")
    questions = json.loads(QUESTIONS.read_text())
    assert len(rows) == len(questions)
    assert [r["reference"] for r in rows] == [q.get("output") for q in questions]
    assert all(q["instruction"] in r["prompt"] for q, r in zip(questions, rows))
    assert all("You are a helpful assistant." in r["prompt"] for r in rows)  # the run's system prompt
    metrics = json.loads((quickstart_copy / "predict" / "metrics.json").read_text())
    assert (metrics["rows"], metrics["scored_rows"], metrics["rows_without_reference"]) == (8, 7, 1)
    assert metrics["languages"] == {"other": 5, "zh": 2}
    assert metrics["tokenizers"]["bleu"] == {"sacrebleu:13a": 5, "sacrebleu:zh": 2}
    # The run learnt its identity: its answers name it, and overlap their references.
    english = [r for r in rows if r["reference"] and r["language"] == "other"]
    assert sum("Nova" in r["prediction"] or "Acme" in r["prediction"] for r in english) >= 3, english
    assert metrics["rouge_l"] > 40 and metrics["exact_match"] >= 0
    chinese = [r for r in rows if r.get("language") == "zh"]
    assert all(r["rouge_l"] > 0 for r in chinese), chinese
    assert f"ROUGE-L {metrics['rouge_l']:.2f}" in done.stdout


def test_predict_refuses_a_run_that_has_not_finished(quickstart_copy):
    (quickstart_copy / "RUN_COMPLETE").unlink()
    done = runner("predict", quickstart_copy, "--data", QUESTIONS)
    assert done.returncode == 2
    assert "no finished run (no RUN_COMPLETE)" in done.stderr and "runner train CONFIG" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (quickstart_copy / "predict").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run with an eval split (val_size), in seconds."""
    from runner.plan.resolve import make_plan
    from runner.train.command import run
    from tests.tiny_model import save_tiny_model, write_config

    root = tmp_path_factory.mktemp("predict")
    model_dir = save_tiny_model(root / "model")
    cfg = write_config(root / "cfg", model_dir, training={"max_steps": 2},
                       dataset={"num_samples": 12}, extra={"val_size": 3, "template": {"name": "tokenizer",
                                                                                        "system_prompt": "Be brief."}})
    return run(make_plan(cfg))


def test_predict_answers_the_runs_eval_split_by_default(tiny_run, tmp_path):
    out = tmp_path / "answers.jsonl"
    done = runner("predict", tiny_run, "--max-new-tokens", 4, "--batch-size", 2, "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_jsonl(out)
    assert len(rows) == 3 and all(r["reference"] for r in rows)
    assert all("identity.json:" in r["origin"] for r in rows)  # each prompt's file:line
    assert all("Be brief." in r["prompt"] for r in rows)
    metrics = json.loads((tmp_path / "answers.metrics.json").read_text())
    assert metrics["data"] == {"source": "eval split"} and metrics["scored_rows"] == 3
    assert metrics["generation"]["max_new_tokens"] == 4 and not (tiny_run / "predict").exists()
    again = runner("predict", tiny_run, "--max-new-tokens", 4, "-o", out)  # its own file: replaced
    assert again.returncode == 0, again.stderr[-2000:]


def test_conversations_without_an_answer_are_predicted_and_not_scored(tiny_run, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Who are you?"},
                                             {"role": "assistant", "content": "I am Nova."}]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    out = tmp_path / "chats.predictions.jsonl"
    done = runner("predict", tiny_run, "--data", data, "--format", "openai", "--max-new-tokens", 3, "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_jsonl(out)
    assert [r["reference"] for r in rows] == ["I am Nova.", None]
    assert "rouge_l" in rows[0] and "rouge_l" not in rows[1]
    metrics = json.loads(out.with_name("chats.predictions.metrics.json").read_text())
    assert (metrics["scored_rows"], metrics["rows_without_reference"]) == (1, 1)


def test_predict_never_overwrites_a_file_it_did_not_write(tiny_run, tmp_path):
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"a": 1}\n')
    done = runner("predict", tiny_run, "--data", QUESTIONS, "-o", mine)
    assert done.returncode == 2 and "is not a predictions file written by runner predict" in done.stderr
    assert mine.read_text() == '{"a": 1}\n'
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "Hi", "output": "Hello"}, {"output": "no question"}]')
    done = runner("predict", tiny_run, "--data", bad, "-o", tmp_path / "p.jsonl")
    assert done.returncode == 2 and "bad.json:1" in done.stderr and "missing field 'instruction'" in done.stderr
    assert "Traceback" not in done.stderr
