"""Render conversations with a chat template and find the characters that carry loss.

Masks come from incremental rendering, never from searching the output for the content: the
trained span of assistant turn i starts where the conversation rendered up to turn i with the
generation prompt stops agreeing with the full rendering, and ends where the conversation
rendered through turn i stops agreeing with it. That is exactly what the model must generate
after the generation prompt: the assistant content plus its end-of-turn token(s), whatever the
template. It needs a prefix-preserving template (earlier turns render the same whatever
follows); one that is not (official Qwen3 drops past <think> blocks) gives an empty span, which
stops the run with a clear message (check_template says so up front).

Templates that cannot render something the data has get a documented, counted adaptation rather
than an error or a silent drop: a system message they reject is folded into the first user
turn; tool calls they ignore become the call's JSON text; tool results they reject become user
turns; tool definitions they ignore are appended to the system message.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from contextlib import contextmanager

from runner.data.formats import RowError
from runner.errors import UserError

_SENTINEL_NAME, _SENTINEL_ARG, _SENTINEL_RESULT = "tool_name_q7x", "arg_key_q7x", "tool_result_q7x"

# Wall-clock bound of one rendering. Real templates render a row in milliseconds; the sandbox
# bounds range() to 100k items, but nested loops (or a loop over a huge row) can still run for
# hours, and no row is worth that.
RENDER_SECONDS = 10.0


class TemplateRenderError(RowError):
    """The template refused this row (e.g. roles that do not alternate)."""


class RenderTimeout(BaseException):
    """A rendering ran past RENDER_SECONDS. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` inside the template engine (or ours) swallows it; the pipeline turns it into
    an error naming the row and the template, whatever on_bad_row says."""


_bound_active = False


@contextmanager
def time_bound(name: str):
    """Raise RenderTimeout once RENDER_SECONDS have passed (SIGALRM: the main thread only; elsewhere
    rendering is unbounded). Nested bounds share the outer one: the pipeline bounds all the
    renderings of a row together, so a row of 50,000 turns cannot take hours one turn at a time."""
    global _bound_active
    if (_bound_active or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def expired(signum, frame):
        raise RenderTimeout(f"template {name} took more than {RENDER_SECONDS:g} s to render")

    previous = signal.signal(signal.SIGALRM, expired)
    _bound_active = True
    signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _bound_active = False


def _compile(source: str):
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # private helper moved: fall back to the public, slower path
        from transformers.utils.chat_template_utils import render_jinja_template

        class _Public:
            def render(self, messages, **kwargs):
                return render_jinja_template([messages], chat_template=source, **kwargs)[0][0]

        return _Public()
    return _compile_jinja_template(source)


def common_prefix_len(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on startswith keeps the comparison in C
        mid = (lo + hi + 1) // 2
        if b.startswith(a[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Renderer:
    """A compiled template with the tokenizer's special-token strings and template kwargs."""

    def __init__(self, source: str, special_tokens: dict | None = None, kwargs: dict | None = None,
                 name: str = "template", added_tokens=()):
        self.source = source
        # Where renderings disagree only by chance ("<" of "<|im_end|>" vs "<" of "<|user|>"),
        # a boundary is pulled back to the start of the added token it would cut.
        added = sorted({t for t in added_tokens if len(t) > 1}, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, added))) if added else None
        self._added_max = max((len(t) for t in added), default=0)
        self.name = name
        self.compiled = _compile(source)
        self.variables = {k: (v or "") for k, v in (special_tokens or {}).items()}
        self.variables.update(kwargs or {})
        self._caps = None

    @classmethod
    def for_tokenizer(cls, template, tokenizer):
        tokens = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        name = template.origin if template.name == "jinja" else template.name  # the user's file by its path
        return cls(template.source, tokens, template.kwargs, name, tokenizer.get_added_vocab())

    def _snap(self, text: str, pos: int) -> int:
        """pos, or the start of an added token of `text` that pos falls inside."""
        if self._added_re is None or pos >= len(text):
            return pos
        lo = max(0, pos - self._added_max + 1)
        for m in self._added_re.finditer(text, lo, min(len(text), pos + self._added_max)):
            if m.start() < pos < m.end():
                return m.start()
        return pos

    def render(self, messages: list, tools=None, add_generation_prompt: bool = False) -> str:
        try:
            with time_bound(self.name):
                return self.compiled.render(messages=messages, tools=tools, documents=None,
                                            add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as e:  # jinja raises TemplateError, TypeError, UndefinedError ...
            raise TemplateRenderError(f"template {self.name} cannot render this conversation: {e}") from None

    # ---- what the template can render -------------------------------------------------------
    @property
    def caps(self) -> dict:
        if self._caps is None:
            self._caps = {"system": self._probe_system(), "tool_calls": self._probe_tool_calls(),
                          "tool_role": self._probe_tool_role(), "tool_defs": self._probe_tool_defs()}
        return self._caps

    def _renders(self, messages, tools=None, must_contain=()) -> bool:
        try:
            text = self.render(messages, tools)
        except TemplateRenderError:
            return False
        return all(s in text for s in must_contain)

    def _probe_system(self) -> bool:
        return self._renders([{"role": "system", "content": "sys_q7x"}, {"role": "user", "content": "u"},
                              {"role": "assistant", "content": "a"}], must_contain=("sys_q7x",))

    def _probe_tool_calls(self) -> bool:
        call = {"type": "function", "function": {"name": _SENTINEL_NAME, "arguments": {_SENTINEL_ARG: 1}}}
        return self._renders([{"role": "user", "content": "u"},
                              {"role": "assistant", "content": "", "tool_calls": [call]}],
                             must_contain=(_SENTINEL_NAME, _SENTINEL_ARG))

    def _probe_tool_role(self) -> bool:
        return self._renders([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                              {"role": "tool", "content": _SENTINEL_RESULT}, {"role": "assistant", "content": "b"}],
                             must_contain=(_SENTINEL_RESULT,))

    def _probe_tool_defs(self) -> bool:
        tools = [{"type": "function", "function": {"name": _SENTINEL_NAME, "parameters": {}}}]
        return self._renders([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], tools,
                             must_contain=(_SENTINEL_NAME,))

    # ---- adapting a row to the template -----------------------------------------------------
    def prepare(self, messages: list, tools) -> tuple[list, list | None, list[str]]:
        """Messages and tools as this template can render them, plus the adaptations made."""
        caps, notes, out = self.caps, [], []
        for m in messages:
            if m.get("tool_calls") and not caps["tool_calls"]:
                calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                         for c in m["tool_calls"]]
                text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
                m = {"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text}
                notes.append("tool_calls_as_text")
            elif m["role"] == "tool" and not caps["tool_role"]:
                m = {"role": "user", "content": m["content"]}
                notes.append("tool_results_as_user")
            out.append(m)
        if tools and not caps["tool_defs"]:
            listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
            text = "You can call these tools:\n" + listing
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
            else:
                out.insert(0, {"role": "system", "content": text})
            notes.append("tools_in_system")
            tools = None
        if out and out[0]["role"] == "system" and not caps["system"]:
            system, rest = out[0]["content"], out[1:]
            if rest and rest[0]["role"] == "user":
                rest[0] = {"role": "user", "content": system + "\n\n" + rest[0]["content"]}
                out = rest
                notes.append("system_folded")
        return out, tools, notes

    # ---- the trained spans ------------------------------------------------------------------
    @property
    def has_markers(self) -> bool:
        return re.search(r"\{%-?\s*generation\s*-?%\}", self.source) is not None

    def render_tracked(self, messages: list, tools=None) -> tuple[str, list[tuple[int, int]]]:
        """The rendering and the character spans of its {% generation %} blocks."""
        blocks, spans = [], []
        try:
            with time_bound(self.name), self.compiled.environment.activate_tracker(blocks, spans):
                for block in self.compiled.generate(messages=messages, tools=tools, documents=None,
                                                    add_generation_prompt=False, **self.variables):
                    blocks.append(block)
        except Exception as e:
            raise TemplateRenderError(f"template {self.name} cannot render this conversation: {e}") from None
        return "".join(blocks), sorted(spans)

    def spans(self, messages: list, tools, train_on: str = "assistant") -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the (start, end) character spans that carry loss.

        Each assistant turn starts where the rendering with the generation prompt stops agreeing
        with the full one. It ends at the end of its {% generation %} block when the template
        has them (exact even for templates that append something only after the final turn),
        else where the rendering through that turn stops agreeing with the full one.
        """
        marked = self.has_markers and hasattr(self.compiled, "environment")
        full, blocks = self.render_tracked(messages, tools) if marked else (self.render(messages, tools), None)
        if train_on == "all":
            return full, [(0, len(full))]
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if train_on == "last_assistant":
            turns = turns[-1:]
        spans = []
        for i in turns:
            prompt = self.render(messages[:i], tools, add_generation_prompt=True) if i else ""
            start = common_prefix_len(prompt, full)
            if start < len(prompt):  # the generation prompt is not a prefix (DeepSeek's "<think>")
                start = self._snap(prompt, start)
            if spans and start < spans[-1][1]:
                start = spans[-1][1]
            last = i + 1 == len(messages)
            if blocks is not None:
                end = _block_end(blocks, start, extend=last)
            elif last:
                end = len(full)
            else:
                through = self.render(messages[: i + 1], tools)
                end = common_prefix_len(through, full)
                if end < len(through):  # something is rendered only after the final turn (Phi-3's EOS)
                    end = self._snap(through, end)
            if end <= start:
                raise UserError(
                    f"template {self.name} renders assistant turns differently once later turns follow "
                    "(not prefix-preserving), so the trained tokens cannot be found by incremental rendering",
                    where="template.name",
                    hint="use the family's training variant (template.name: qwen3 does), or a template that "
                         "renders earlier turns the same whatever follows",
                )
            spans.append((start, end))
        return full, spans


def _block_end(blocks: list, start: int, extend: bool) -> int:
    """End of the generation block holding (or following) `start`; after the final turn, blocks
    that follow back to back (Phi-3's closing EOS) belong to it too."""
    for k, (s, e) in enumerate(blocks):
        if e > start:
            while extend and k + 1 < len(blocks) and blocks[k + 1][0] == e:
                k += 1
                e = blocks[k][1]
            return e
    return start
