"""Row layouts (`datasets[].format`) normalised into one internal form.

Conversation rows become {"messages": [{"role", "content", "tool_calls"?}], "tools": list | None};
preference rows add "chosen"/"rejected" (one assistant message each, "messages" is the prompt);
kto rows add "label" (the last message is the judged assistant turn); text rows are {"text"}.

A malformed row raises RowError(reason); the reader adds file:line and decides stop or skip.
Pure Python, no heavy imports.
"""

from __future__ import annotations

import json

from runner.data.rowjson import MAX_DEPTH, RowError, check_depth, loads  # noqa: F401 (RowError re-exported)

STANDARD_ROLES = ("system", "user", "assistant", "tool", "tool_call")

# File role names seen in the wild -> standard roles; `roles:` entries are merged over these.
DEFAULT_ROLES = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "tool": "tool", "observation": "tool", "function": "tool",
    "ipython": "tool", "function_call": "tool_call", "tool_call": "tool_call",
}

# Each format's fields and the file column they are read from by default (`columns:` overrides).
FIELDS = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
               "history": "history"},
    "dolly": {"instruction": "instruction", "context": "context", "response": "response", "system": "system"},
    "self_instruct": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion", "system": "system"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools", "role": "from",
                 "content": "value"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools", "role": "role", "content": "content"},
    "text": {"text": "text"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "instruction": "instruction",
                   "input": "input", "messages": "conversations", "system": "system", "tools": "tools",
                   "history": "history", "role": "from", "content": "value"},
    "kto": {"messages": "messages", "label": "label", "prompt": "prompt", "completion": "completion",
            "system": "system", "tools": "tools", "role": "role", "content": "content"},
}
FIELDS["messages"] = FIELDS["openai"]
# Where a conversation column may live when the default name is absent (sharegpt files with
# "messages", openai files with "conversations") and which message keys go with it.
_CONVERSATION_COLUMNS = (("conversations", "from", "value"), ("messages", "role", "content"))


class Normalizer:
    """Turns raw rows of one dataset into the internal form."""

    def __init__(self, fmt: str, columns: dict | None = None, roles: dict | None = None,
                 substitute: dict | None = None, system: str | None = None, need_answer: bool = True):
        """`need_answer=False` (prompts to answer, `runner predict`): a row may lack its answer (the
        output, response or completion; a conversation's last assistant turn; a preference row's
        chosen), and is then a prompt without a reference."""
        if fmt not in FIELDS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.user_columns = dict(columns or {})
        self.col = {**FIELDS[fmt], **self.user_columns}
        self.roles = {**DEFAULT_ROLES, **(roles or {})}
        self.substitute = {"{{" + k + "}}": v for k, v in (substitute or {}).items()}
        self.system = system
        self.need_answer = need_answer

    def __call__(self, row) -> dict:
        if not isinstance(row, dict):
            raise RowError(f"expected an object with fields, got {type(row).__name__}")
        check_depth(row, "the row")
        if self.fmt == "text":
            return {"text": self._text(row, "text", required=True)}
        out = getattr(self, "_" + ("openai" if self.fmt == "messages" else self.fmt))(row)
        if self.substitute:
            out = self._fill(out)
        return out

    # ---- field access -------------------------------------------------------------------------
    def _get(self, row, field, required=False):
        column = self.col[field]
        if column not in row or row[column] is None:
            if required:
                hint = "" if field in self.user_columns else f" (map another column with columns: {{{field}: ...}})"
                raise RowError(f"missing field {column!r}{hint}")
            return None
        return row[column]

    def _text(self, row, field, required=False) -> str | None:
        value = self._get(row, field, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise RowError(f"field {self.col[field]!r} must be a string, got {type(value).__name__}")
        if required and not value.strip():
            raise RowError(f"field {self.col[field]!r} is empty")
        return value

    def _fill(self, value):
        if isinstance(value, str):
            for key, sub in self.substitute.items():
                value = value.replace(key, sub)
            return value
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        if isinstance(value, dict):
            return {k: (self._fill(v) if k not in ("tools", "label") else v) for k, v in value.items()}
        return value

    def _system_first(self, messages: list, system: str | None) -> list:
        if messages and messages[0]["role"] == "system":
            return messages
        system = system if system is not None else self.system
        return ([{"role": "system", "content": system}] if system else []) + messages

    # ---- instruction formats ------------------------------------------------------------------
    def _instruction(self, row, input_field, output_field) -> dict:
        prompt = self._text(row, "instruction", required=True)
        extra = self._text(row, input_field)
        if extra and extra.strip():
            prompt = prompt + "\n" + extra
        answer = self._text(row, output_field, required=self.need_answer)
        messages = self._history(row) + [user(prompt)] + ([assistant(answer)] if answer and answer.strip() else [])
        return {"messages": self._system_first(messages, self._text(row, "system")), "tools": None}

    def _history(self, row) -> list:
        if "history" not in self.col:
            return []
        history = self._get(row, "history")
        if history is None:
            return []
        history = _maybe_json(history, self.col["history"])
        if not isinstance(history, list):
            raise RowError(f"field {self.col['history']!r} must be a list of [user, assistant] pairs")
        out = []
        for pair in history:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(p, str) for p in pair)):
                raise RowError(f"field {self.col['history']!r} must be a list of [user, assistant] string pairs")
            if not pair[1].strip():
                raise RowError("empty assistant turn in history")
            out += [user(pair[0]), assistant(pair[1])]
        return out

    def _alpaca(self, row):
        return self._instruction(row, "input", "output")

    def _self_instruct(self, row):
        return self._instruction(row, "input", "output")

    def _dolly(self, row):
        return self._instruction(row, "context", "response")

    def _prompt_completion(self, row):
        prompt, completion = self._get(row, "prompt", True), self._get(row, "completion", self.need_answer)
        if isinstance(prompt, list) and isinstance(completion, (list, type(None))):  # TRL conversational form
            messages = self._messages(prompt, "role", "content") + (
                self._messages(completion, "role", "content") if completion else [])
        else:
            prompt, completion = self._text(row, "prompt", True), self._text(row, "completion", self.need_answer)
            messages = [user(prompt)] + ([assistant(completion)] if completion and completion.strip() else [])
        checked = self._checked(messages)
        return {"messages": self._system_first(checked, self._text(row, "system")), "tools": None}

    # ---- conversation formats -----------------------------------------------------------------
    def _conversation(self, row, need_assistant=True) -> dict:
        raw, role_key, content_key = self._conversation_column(row)
        messages = self._messages(raw, role_key, content_key)
        messages = self._system_first(messages, self._text(row, "system") if "system" in self.col else None)
        if need_assistant:
            messages = self._checked(messages)
        return {"messages": messages, "tools": self._tools(row)}

    def _conversation_column(self, row):
        column = self.col["messages"]
        if column in row or "messages" in self.user_columns:
            raw = _maybe_json(self._get(row, "messages", required=True), column)
            role_key, content_key = self.col["role"], self.col["content"]
            first = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], dict) else {}
            if "role" not in self.user_columns and role_key not in first:
                # sharegpt-style {from, value} under an openai-style name, or the other way round
                for _, other_role, other_content in _CONVERSATION_COLUMNS:
                    if other_role in first:
                        role_key, content_key = other_role, self.user_columns.get("content", other_content)
            return raw, role_key, content_key
        for name, role_key, content_key in _CONVERSATION_COLUMNS:
            if name in row and row[name] is not None:
                return (_maybe_json(row[name], name), self.user_columns.get("role", role_key),
                        self.user_columns.get("content", content_key))
        return self._get(row, "messages", required=True), None, None  # raises: missing field

    def _messages(self, raw, role_key, content_key) -> list:
        if not isinstance(raw, list) or not raw:
            raise RowError("the conversation must be a non-empty list of messages")
        out = []
        for i, message in enumerate(raw, 1):
            if not isinstance(message, dict):
                raise RowError(f"message {i} must be an object, got {type(message).__name__}")
            if role_key not in message:
                raise RowError(f"message {i} has no {role_key!r} key (set columns: {{role: ...}})")
            name = message[role_key]
            if not isinstance(name, str) or name not in self.roles:
                raise RowError(f"message {i}: unknown role {name!r} (map it with roles: {{{name}: user}})")
            role = self.roles[name]
            content = message.get(content_key, "")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise RowError(f"message {i}: {content_key!r} must be a string, got {type(content).__name__}")
            if role == "tool_call":
                out.append(assistant("", _parse_tool_calls(content, i)))
            elif role == "assistant" and message.get("tool_calls"):
                out.append(assistant(content, _normalise_tool_calls(message["tool_calls"], i)))
            else:
                entry = {"role": role, "content": content}
                if role == "tool" and isinstance(message.get("name"), str):
                    entry["name"] = message["name"]
                out.append(entry)
        return out

    def _tools(self, row):
        if "tools" not in self.col:
            return None
        tools = self._get(row, "tools")
        if tools is None or tools == "":
            return None
        if isinstance(tools, str):
            tools = loads(tools, f"field {self.col['tools']!r}")
        if isinstance(tools, dict):
            tools = [tools]
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise RowError(f"field {self.col['tools']!r} must be a list of tool schemas")
        # Chat templates expect the OpenAI shape {"type": "function", "function": schema}.
        tools = [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
                 for t in tools]
        return tools or None

    def _checked(self, messages: list) -> list:
        """A training row's rules; a prompt without its answer (need_answer=False) has no assistant
        turn to check."""
        if self.need_answer or any(m["role"] == "assistant" for m in messages):
            return _check_conversation(messages)
        return messages

    def _sharegpt(self, row):
        return self._conversation(row)

    def _openai(self, row):
        return self._conversation(row)

    # ---- preference formats -------------------------------------------------------------------
    def _preference(self, row):
        conversation_columns = {self.col["messages"], "conversations", "messages"}
        if any(c in row for c in conversation_columns):
            prompt = self._conversation(row, need_assistant=False)
            messages, tools = prompt["messages"], prompt["tools"]
            _, role_key, content_key = self._conversation_column(row)
        elif self.col["instruction"] in row:
            prompt = self._text(row, "instruction", required=True)
            extra = self._text(row, "input")
            if extra and extra.strip():
                prompt += "\n" + extra
            messages = self._system_first(self._history(row) + [user(prompt)], self._text(row, "system"))
            tools, role_key, content_key = None, "role", "content"
        else:
            prompt = self._get(row, "prompt", required=True)
            if isinstance(prompt, list):
                messages = self._messages(prompt, "role", "content")
            else:
                messages = [user(self._text(row, "prompt", required=True))]
            messages = self._system_first(messages, self._text(row, "system"))
            tools, role_key, content_key = None, "role", "content"
        if not messages or messages[-1]["role"] not in ("user", "tool"):
            raise RowError("the prompt of a preference row must end with a user (or tool) turn")
        out = {"messages": messages, "tools": tools}
        if not self.need_answer:  # a prompt to answer: the chosen answer is its reference, when given
            if self._get(row, "chosen") not in (None, ""):
                out["chosen"] = self._answer(row, "chosen", role_key, content_key)
            return out
        for side in ("chosen", "rejected"):
            out[side] = self._answer(row, side, role_key, content_key)
        return out

    def _answer(self, row, side, role_key, content_key) -> dict:
        value = _maybe_json(self._get(row, side, required=True), self.col[side])
        if isinstance(value, str):
            message = assistant(value)
        else:
            if isinstance(value, dict):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
                raise RowError(f"field {self.col[side]!r} must be a string or one assistant message, "
                               f"got {_shape(value)}")
            keys = (role_key, content_key) if value and role_key in value[0] else ("role", "content")
            if not value or not all(isinstance(v, dict) and keys[0] in v for v in value):
                keys = ("from", "value")
            messages = self._messages(value, *keys)
            if len(messages) != 1 or messages[0]["role"] != "assistant":
                raise RowError(f"field {self.col[side]!r} must be one assistant turn")
            message = messages[0]
        if not message["content"].strip() and not message.get("tool_calls"):
            raise RowError(f"field {self.col[side]!r} is an empty assistant turn")
        return message

    def _kto(self, row):
        label = self._get(row, "label", required=True)
        if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):
            label = label.lower() in ("true", "1")
        if not isinstance(label, bool):
            raise RowError(f"field {self.col['label']!r} must be a boolean, got {type(label).__name__}")
        if any(c in row for c in {self.col["messages"], "conversations", "messages"}):
            out = self._conversation(row)
        else:
            prompt, completion = self._text(row, "prompt", True), self._text(row, "completion", True)
            out = {"messages": self._system_first([user(prompt), assistant(completion)], self._text(row, "system")),
                   "tools": None}
        if out["messages"][-1]["role"] != "assistant":
            raise RowError("a kto conversation must end with the assistant turn being judged")
        out["label"] = label
        return out


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str, tool_calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _shape(value) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else f"a list of {type(value[0]).__name__}"
    return type(value).__name__


def _maybe_json(value, column):
    """CSV and parquet files often hold nested fields as JSON text."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        return loads(value, f"field {column!r}")
    return value


def _parse_tool_calls(text: str, i: int) -> list:
    try:
        calls = json.loads(text)
    except RecursionError:
        raise RowError(f"message {i}: tool call: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise RowError(f"message {i}: tool call is not valid JSON: {e}") from None
    check_depth(calls, f"message {i}: tool call")
    return _normalise_tool_calls(calls if isinstance(calls, list) else [calls], i)


def _normalise_tool_calls(calls, i: int) -> list:
    if not isinstance(calls, list):
        raise RowError(f"message {i}: tool_calls must be a list")
    out = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RowError(f"message {i}: a tool call needs a 'name'")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = loads(args, f"message {i}: tool call arguments",
                         f"message {i}: tool call arguments are not valid JSON") if args.strip() else {}
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RowError(f"message {i}: tool call arguments must be an object, got {_shape(args)}")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def _check_conversation(messages: list) -> list:
    """Rules every trainable conversation obeys: some assistant turn, none of them empty."""
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("the conversation has no assistant turn to train on")
    for i, m in enumerate(messages, 1):
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise RowError(f"message {i}: empty assistant turn")
        if m["role"] == "system" and i != 1:
            raise RowError(f"message {i}: a system message may only come first")
    return messages
