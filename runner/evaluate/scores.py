"""Generation metrics of `runner predict`: exact match, BLEU (sacrebleu) and ROUGE-L (rouge-score),
on a 0-100 scale, over the rows that have a reference.

Chinese, Japanese and Korean are scored by characters, as LLaMA-Factory scores Chinese: rouge-score's
default tokenizer keeps only [a-z0-9] runs, so a Chinese pair scores 0 whatever it says (and a
Chinese answer that shares one Latin name with its reference scores 1.0). The language is decided
per row from the reference's script:

- zh (Han characters, no kana or hangul): sacrebleu's `zh` tokenizer (each Han character a token,
  the rest as 13a), ROUGE-L over characters;
- ja / ko (kana or hangul): sacrebleu's `char` tokenizer (its ja-mecab / ko-mecab need MeCab),
  ROUGE-L over characters;
- other: sacrebleu's default `13a`, ROUGE-L over words as rouge-score's default tokenizer cuts
  them, letters of every script kept (its default drops Cyrillic, Greek, accents...).

Corpus BLEU over rows tokenized differently adds up each group's n-gram statistics (what
sacrebleu's corpus score is made of) and computes one score from the sums: one tokenizer per row,
one number for the set. metrics.json records how many rows each tokenizer scored."""
from __future__ import annotations

import re
import unicodedata

SCALE = 100.0
BLEU_TOKENIZER = {"zh": "zh", "ja": "char", "ko": "char", "other": "13a"}
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
KANA = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{HAN}{KANA}{HANGUL}]")
# One token per CJK character; elsewhere runs of letters and digits of any script (no underscore).
TOKEN = re.compile(f"[{HAN}{KANA}{HANGUL}]|[^\\W_{HAN}{KANA}{HANGUL}]+")


def language(reference: str) -> str:
    """zh | ja | ko | other, from the reference's script."""
    if re.search(f"[{KANA}]", reference):
        return "ja"
    if re.search(f"[{HANGUL}]", reference):
        return "ko"
    if re.search(f"[{HAN}]", reference):
        return "zh"
    return "other"


class RougeTokenizer:
    """For rouge-score's RougeScorer(tokenizer=...): lower case, CJK characters one token each,
    other text in words. On ASCII text it cuts exactly as rouge-score's default tokenizer does."""

    def tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def normalize_answer(text: str) -> str:
    """Exact match compares answers with surrounding whitespace removed and inner runs of
    whitespace as one space; case and punctuation count."""
    return " ".join(text.split())


def score(pairs: list[tuple[str, str]]) -> dict:
    """Metrics over (reference, prediction) pairs, and each row's own: {"exact_match", "bleu",
    "rouge_l", "tokenizers", "languages", "rows": [{"language", "exact_match", "rouge_l"}]}."""
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokenizer())
    rows, groups = [], {}
    for reference, prediction in pairs:
        lang = language(reference)
        rows.append({"language": lang,
                     "exact_match": normalize_answer(prediction) == normalize_answer(reference),
                     "rouge_l": round(rouge.score(reference, prediction)["rougeL"].fmeasure * SCALE, 4)})
        groups.setdefault(BLEU_TOKENIZER[lang], []).append((reference, prediction))
    n = len(rows)
    counts: dict = {}
    for row in rows:
        counts[row["language"]] = counts.get(row["language"], 0) + 1
    return {
        "exact_match": round(SCALE * sum(r["exact_match"] for r in rows) / n, 4) if n else None,
        "bleu": round(corpus_bleu(groups), 4) if n else None,
        "rouge_l": round(sum(r["rouge_l"] for r in rows) / n, 4) if n else None,
        "languages": counts,
        "tokenizers": {
            "bleu": {f"sacrebleu:{name}": len(group) for name, group in sorted(groups.items())},
            "rouge_l": {kind: count for kind, count in (
                ("characters", sum(1 for r in rows if r["language"] != "other")),
                ("words", sum(1 for r in rows if r["language"] == "other"))) if count},
        },
        "rows": rows,
    }


def corpus_bleu(groups: dict) -> float:
    """sacrebleu's corpus BLEU (its defaults: 4-grams, exp smoothing) over groups of (reference,
    prediction) pairs, each group tokenized by its own sacrebleu tokenizer."""
    from sacrebleu.metrics import BLEU

    correct, total, sys_len, ref_len = None, None, 0, 0
    for tokenizer, group in groups.items():
        references = [r for r, _ in group]
        part = BLEU(tokenize=tokenizer).corpus_score([p for _, p in group], [references])
        correct, total = correct or [0] * len(part.counts), total or [0] * len(part.totals)
        correct = [a + b for a, b in zip(correct, part.counts)]
        total = [a + b for a, b in zip(total, part.totals)]
        sys_len, ref_len = sys_len + part.sys_len, ref_len + part.ref_len
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score
