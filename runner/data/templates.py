"""Which chat template a run trains with.

Named templates come from the installed `trl` package where it ships the family (its official
template is the reference, its `*_training` variant is what we train with: same text, prefix-
preserving, `{% generation %}` markers); the families trl lacks live in runner/templates/*.jinja.
`template.name: tokenizer` takes the tokenizer's own template, swapped for its training variant
when trl (or we) know one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UserError

OWN_DIR = Path(__file__).resolve().parents[1] / "templates"

# name -> (where, official file, training file); where is "trl" or "own".
NAMED = {
    "chatml": ("own", "chatml.jinja", "chatml.jinja"),
    "qwen2.5": ("trl", "qwen2_5.jinja", "qwen2_5_training.jinja"),
    "qwen3": ("trl", "qwen3.jinja", "qwen3_training.jinja"),
    "llama3": ("trl", "llama3.jinja", "llama3_training.jinja"),
    "llama2": ("own", "llama2.jinja", "llama2.jinja"),
    "mistral": ("own", "mistral.jinja", "mistral.jinja"),
    "gemma": ("trl", "gemma.jinja", "gemma_training.jinja"),
    "phi3": ("trl", "phi3.jinja", "phi3_training.jinja"),
    "deepseek": ("trl", "deepseekv3.jinja", "deepseekv3_training.jinja"),
    "vicuna": ("own", "vicuna.jinja", "vicuna.jinja"),
    "alpaca": ("own", "alpaca.jinja", "alpaca.jinja"),
}

# Tokenizer templates trl has no training variant for, but we do: official file -> training file.
OWN_TRAINING_VARIANTS = {"smollm2.jinja": "smollm2_training.jinja"}


@dataclass(frozen=True)
class ChatTemplate:
    name: str              # template.name from the plan
    source: str            # the Jinja text we render for training
    official: str | None   # the reference text (None when the user's own file is the reference)
    origin: str            # where `source` came from, for messages: "trl:qwen3_training.jinja"
    kwargs: dict = field(default_factory=dict)  # extra template variables (enable_thinking)


def trl_templates_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.origin:
        raise UserError("the trl package is not installed; it ships the official chat templates",
                        hint="pip install 'trl>=1.0'")
    return Path(spec.origin).parent / "chat_templates"


def read_template(where: str, filename: str) -> str:
    directory = trl_templates_dir() if where == "trl" else OWN_DIR
    return (directory / filename).read_text(encoding="utf-8")


def named_template(name: str) -> tuple[str, str, str]:
    """(official text, training text, origin) of a named template."""
    where, official, training = NAMED[name]
    return read_template(where, official), read_template(where, training), f"{where}:{training}"


def resolve_template(template_cfg: dict, tokenizer=None) -> ChatTemplate:
    """The template of `plan.data["template"]`; `tokenizer` is needed only for name: tokenizer."""
    name = template_cfg.get("name") or "tokenizer"
    kwargs = {}
    if template_cfg.get("enable_thinking") is not None:
        kwargs["enable_thinking"] = bool(template_cfg["enable_thinking"])
    if name in NAMED:
        official, training, origin = named_template(name)
        return ChatTemplate(name, training, official, origin, kwargs)
    if name == "jinja":
        path = template_cfg.get("jinja")
        if not path:
            raise UserError("template.name is jinja but template.jinja names no file", where="template.jinja")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read chat template {path}: {e.strerror}", where="template.jinja") from None
        return ChatTemplate(name, text, None, f"file:{path}", kwargs)
    if name != "tokenizer":
        raise UserError(f"unknown template {name!r}", where="template.name",
                        hint="one of tokenizer, jinja, " + ", ".join(NAMED))
    if tokenizer is None:
        raise ValueError("template.name: tokenizer needs the tokenizer")
    own = tokenizer_template(tokenizer)
    training, origin = training_variant(tokenizer, own)
    return ChatTemplate(name, training, own, origin, kwargs)


def tokenizer_template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise UserError(
            "the tokenizer has no chat template, and template.name is tokenizer",
            where="template.name",
            hint="name a template (chatml, llama3, qwen2.5, ...) or give your own file with name: jinja",
        )
    return template


def training_variant(tokenizer, template: str) -> tuple[str, str]:
    """A prefix-preserving, generation-marked variant of a tokenizer's template, if one is known."""
    for official, training in OWN_TRAINING_VARIANTS.items():
        if template.strip() == read_template("own", official).strip():
            return read_template("own", training), f"own:{training}"
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        return template, "tokenizer"
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = template
        patched = get_training_chat_template(tokenizer)
    except (ValueError, TypeError, Exception):  # unknown family, or a template trl's probes cannot render
        patched = None
    finally:
        tokenizer.chat_template = original
    if patched:
        return patched, "trl:training variant"
    from trl.chat_template_utils import has_generation_markers

    return template, "tokenizer (generation-marked)" if has_generation_markers(template) else "tokenizer"
