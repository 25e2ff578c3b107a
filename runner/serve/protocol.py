"""The OpenAI request and response shapes `runner serve` speaks: requests parsed into dataclasses
(every bad field is a 400 that names it), responses and errors built as plain dicts. No torch here:
the parsing is tested, and refuses bad input, before any model is touched."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

# Fields of the OpenAI API that change nothing here (logging, routing, the user's own tags).
IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options",
                  "frequency_penalty", "presence_penalty", "logit_bias", "prediction", "reasoning_effort"}
ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4  # as in OpenAI's API


class ApiError(Exception):
    """A request the server refuses, answered as OpenAI's error object with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded. temperature 0 is greedy."""

    max_tokens: int | None = None  # None: up to the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the counts


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling
    stream: bool = False
    echo: bool = False
    include_usage: bool = False


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Answer:
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    usage: Usage = field(default_factory=Usage)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def parse_chat(body: dict, known: dict[str, str], images: bool = False) -> ChatRequest:
    """`images`: the served model reads image parts (data: URLs), which become `<image>` marks in
    the message's text and its "images" list."""
    allowed = {"model", "messages", "stream", "n", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "stop", "seed"} | IGNORED_FIELDS
    _refuse_unknown(body, allowed)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    parsed = [_message(m, i, images) for i, m in enumerate(messages)]
    return ChatRequest(model=_model(body, known), messages=parsed, sampling=_sampling(body),
                       stream=_bool(body, "stream"), include_usage=_include_usage(body))


def parse_completion(body: dict, known: dict[str, str]) -> CompletionRequest:
    allowed = {"model", "prompt", "stream", "n", "max_tokens", "temperature", "top_p", "stop", "seed", "echo",
               "best_of", "suffix", "logprobs"} | IGNORED_FIELDS
    _refuse_unknown(body, allowed)
    for name in ("suffix", "logprobs"):
        if body.get(name) is not None:
            raise ApiError(400, f"'{name}' is not supported by this server", param=name)
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "'best_of' must be 1 (one completion per request)", param="best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
    return CompletionRequest(model=_model(body, known), prompt=prompt, sampling=_sampling(body, completion=True),
                             stream=_bool(body, "stream"), echo=_bool(body, "echo"),
                             include_usage=_include_usage(body))


def _with_images(content: list, role: str, where: str) -> dict:
    texts, urls = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].replace("<image>", "").replace("<video>", ""))
            continue
        if kind != "image_url":
            raise ApiError(400, f"'{where}.content[{j}]' must be a text or image_url part", param=f"{where}.content")
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url.startswith("data:image/"):
            raise ApiError(400, f"'{where}.content[{j}].image_url.url' must be a data:image/... URL (base64): this "
                                "server reads no files and fetches no web addresses", param=f"{where}.content")
        texts.append("<image>")
        urls.append(url)
    message = {"role": "system" if role == "developer" else role, "content": "".join(texts)}
    if urls:
        message["images"] = urls
    return message


def _refuse_unknown(body: dict, allowed: set[str]) -> None:
    for name in ("tools", "tool_choice", "functions", "response_format", "logprobs", "top_logprobs"):
        if name in body and name not in allowed:  # refused, never silently ignored
            raise ApiError(400, f"'{name}' is not supported by this server", param=name)
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"unknown field '{name}'", param=name, code="unknown_parameter")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: this server answers one choice per request", param="n")


def _model(body: dict, known: dict[str, str]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' must be the name of a served model (GET /v1/models lists them)", param="model")
    if name not in known:
        raise ApiError(404, f"the model '{name}' does not exist on this server; it serves: {', '.join(known)}",
                       param="model", code="model_not_found")
    return name


def _message(message, index: int, images: bool = False) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"'{where}' must be an object with 'role' and 'content'", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(400, f"'{where}.role' must be one of {', '.join(ROLES)}, not {role!r}", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, list) and images:
        return _with_images(content, role, where)
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"'{where}.content[{j}]' must be a text part ({{type: text, text}}): this server "
                                    "serves a text model", param=f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise ApiError(400, f"'{where}.content' must be a string", param=f"{where}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


def _sampling(body: dict, completion: bool = False) -> Sampling:
    max_tokens = body.get("max_tokens")
    name = "max_tokens"
    if not completion and body.get("max_completion_tokens") is not None:
        max_tokens, name = body["max_completion_tokens"], "max_completion_tokens"
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"'{name}' must be a positive integer", param=name)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "'top_p' must be greater than 0", param="top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, "'seed' must be an integer", param="seed")
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=_stops(body.get("stop")),
                    seed=seed)


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOPS} strings", param="stop")
    return tuple(stops)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false", param=name)
    return value


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return bool(options.get("include_usage"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Responses -----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def models_list(names: list[str], created: int) -> dict:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "runner"}
                                       for n in names]}


def chat_response(rid: str, model: str, answer: Answer) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": answer.usage.to_dict()}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None, usage: Usage | None = None) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:  # the usage chunk has no choices, as OpenAI sends it
        chunk["choices"], chunk["usage"] = [], usage.to_dict()
    return chunk


def completion_response(rid: str, model: str, answer: Answer) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": answer.usage.to_dict()}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None,
                     usage: Usage | None = None) -> dict:
    chunk = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        chunk["choices"], chunk["usage"] = [], usage.to_dict()
    return chunk


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
