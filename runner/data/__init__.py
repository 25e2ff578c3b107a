"""The data pipeline: formats, chat templates, loss masking, packing, cache.

The hand-off to training (see each function's docstring):
    load_tokenizer(plan) -> tokenizer with overrides, pad token and training chat template
    build_datasets(plan, tokenizer=None) -> PreparedData(train, eval, stats)
    refuse_untrainable(plan, prepared) -> warnings; UserError when the data would train nothing useful
    make_collator(plan, tokenizer) -> callable(list[row]) -> dict of tensors (sft / pt)
    check_template(plan, tokenizer) -> ["error: ...", "warning: ..."] for runner lint

Importing this package is cheap: heavy libraries load inside the functions.
"""


def load_tokenizer(plan, attach_template: bool = True):
    from runner.data.tokenizer import load_tokenizer as _load

    return _load(plan, attach_template)


def build_datasets(plan, tokenizer=None, progress: bool = True):
    from runner.data.build import build_datasets as _build

    return _build(plan, tokenizer, progress)


def refuse_untrainable(plan, prepared) -> list[str]:
    from runner.data.build import refuse_untrainable as _refuse

    return _refuse(plan, prepared)


def make_collator(plan, tokenizer):
    from runner.data.collate import make_collator as _make

    return _make(plan, tokenizer)


def check_template(plan, tokenizer) -> list[str]:
    from runner.data.checks import check_template as _check

    return _check(plan, tokenizer)


def __getattr__(name):
    if name == "PreparedData":
        from runner.data.build import PreparedData

        return PreparedData
    raise AttributeError(name)
