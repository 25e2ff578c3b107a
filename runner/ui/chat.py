"""Chat with a run through `runner serve`'s engine (runner.serve.engine): the run's template and
training system prompt, streamed piece by piece; or with the base model an adapter run started
from, under the same template, to see what training changed. Two models are kept loaded (a run and
what it is compared with); asking for a third stops the oldest engine."""
from __future__ import annotations

import threading

from runner.errors import UserError

MAX_TOKENS = 256


KEEP = 2


class Chats:
    def __init__(self, debug: bool = False):
        self.debug = debug
        self._lock = threading.Lock()
        self.engines: dict[str, object] = {}  # oldest first

    def engine_for(self, path, base: bool = False) -> object:
        """Blocking (loads weights): call it from a worker thread."""
        from runner.serve.engine import Engine, load_served

        key = f"{'base of ' if base else ''}{path}"
        with self._lock:
            if key not in self.engines:
                from runner.quiet import quiet_for_run_dir

                quiet_for_run_dir(path, self.debug)  # as `runner serve`: no library chatter unless --debug
                while len(self.engines) >= KEEP:
                    self.engines.pop(next(iter(self.engines))).stop(timeout=5)
                served = base_served(path) if base else load_served(path)
                engine = Engine(served, max_batch=4 if served.model.device.type == "cpu" else None)
                engine.start()
                self.engines[key] = engine
            return self.engines[key]

    def close(self) -> None:
        with self._lock:
            for engine in self.engines.values():
                engine.stop(timeout=5)
            self.engines.clear()


def base_served(run_dir):
    """The base model of an adapter run, loaded as `runner merge` loads it, with the run's tokenizer
    and template: the same prompt as the fine-tuned model gets, without the adapter."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from runner.serve.engine import CPU_CACHE_TOKENS, Served
    from runner.serve.generate import default_system_prompt
    from runner.ship.merge import load_base_for_adapter, load_run_plan
    from runner.train.model import device_type

    run_dir = Path(run_dir)
    if not (run_dir / "adapter_config.json").is_file():
        raise UserError(f"{run_dir.name} is a full fine-tune: its base is the config's model.path, not part of "
                        "the run", hint="chat with the base by opening a run of it, or compare two runs")
    plan = load_run_plan(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = load_base_for_adapter(plan, run_dir, tokenizer)
    if device_type() != "cpu":
        model.to(device_type())
    model.config.use_cache = True
    model.eval()
    context = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0) or 2048
    if model.device.type == "cpu":
        context = min(context, CPU_CACHE_TOKENS)
    eos = {tokenizer.eos_token_id}
    gen_eos = model.generation_config.eos_token_id
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return Served(name=f"base of {plan.name}", model=model, tokenizer=tokenizer, plan=plan,
                  system_prompt=default_system_prompt(plan), context=context,
                  eos_ids=tuple(sorted(i for i in eos if isinstance(i, int) and i >= 0)))


def parse_messages(body: dict) -> tuple[list[dict], float, int]:
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
    max_tokens = body.get("max_tokens", MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
        raise UserError("max_tokens: a whole number from 1 to 4096")
    return out, float(temperature), max_tokens


async def stream_answer(engine, messages: list[dict], temperature: float, max_tokens: int = MAX_TOKENS):
    from runner.serve.app import _chat_prompt
    from runner.serve.protocol import Answer, Sampling

    prompt_ids = _chat_prompt(engine.served, messages)
    room = engine.served.context - len(prompt_ids)
    sampling = Sampling(max_tokens=min(max_tokens, room) if room > 0 else None, temperature=temperature)
    async for piece in engine.generate(prompt_ids, sampling, Answer(), stream=True):
        yield piece
