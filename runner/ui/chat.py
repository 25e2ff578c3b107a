"""Chat with a run through `runner serve`'s engine (runner.serve.engine): the run's template and
training system prompt, streamed piece by piece. One model is kept loaded; asking for another run
stops the first engine."""
from __future__ import annotations

import threading

from runner.errors import UserError

MAX_TOKENS = 256


class Chats:
    def __init__(self):
        self._lock = threading.Lock()
        self.key = None
        self.engine = None

    def engine_for(self, path) -> object:
        """Blocking (loads weights): call it from a worker thread."""
        from runner.serve.engine import Engine, load_served

        with self._lock:
            if self.key != str(path):
                self.close_locked()
                served = load_served(path)
                engine = Engine(served, max_batch=4 if served.model.device.type == "cpu" else None)
                engine.start()
                self.key, self.engine = str(path), engine
            return self.engine

    def close_locked(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=5)
        self.key = self.engine = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


def parse_messages(body: dict) -> tuple[list[dict], float]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > 64:
        raise UserError("messages: a list of 1 to 64 {role, content} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str) or len(m["content"]) > 20000:
            raise UserError("messages: each is {role: system|user|assistant, content: text up to 20000 chars}")
        out.append({"role": m["role"], "content": m["content"]})
    temperature = body.get("temperature", 0.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise UserError("temperature: a number from 0 to 2")
    return out, float(temperature)


async def stream_answer(engine, messages: list[dict], temperature: float):
    from runner.serve.app import _chat_prompt
    from runner.serve.protocol import Answer, Sampling

    prompt_ids = _chat_prompt(engine.served, messages)
    room = engine.served.context - len(prompt_ids)
    sampling = Sampling(max_tokens=min(MAX_TOKENS, room) if room > 0 else None, temperature=temperature)
    async for piece in engine.generate(prompt_ids, sampling, Answer(), stream=True):
        yield piece
