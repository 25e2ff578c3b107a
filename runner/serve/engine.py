"""The generation engine behind `runner serve`: transformers' continuous-batching manager
(`model.init_continuous_batching`) runs every request in flight together on the device, one token
per request per step, new requests joining between steps.

How the manager's settings map to OpenAI requests:
- Sampling is one switch for the whole manager (do_sample); temperature, top_p and top_k are per
  request (`per_request_processors`). So the manager always samples, and a greedy request
  (temperature 0) asks for top_k=1: one token keeps all the probability and the draw is the argmax.
- An adapter run is served with its LoRA merged into an in-memory copy of the base
  (`load_for_generation`): the same outputs as the adapter, and plain Linear layers, so a step costs
  what the base costs. (The manager also runs an unmerged PeftModel, whose LoRA layers it calls like
  any module, at the adapter's extra cost per step.) The files on disk are not touched.
- The manager draws samples from one generator shared by every request in the batch, so a
  request's `seed` cannot make its own draws reproducible while other requests run beside it: the
  server's `--seed` seeds that generator once; greedy answers are deterministic regardless.
- On a CPU the manager would size its KV cache from 60% of the machine's RAM; we give it a fixed
  number of tokens instead and refuse (413) what would not fit.
Stop strings are applied by us on the decoded text (runner.serve.stops)."""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.serve.protocol import Answer, ApiError, Sampling, Usage
from runner.serve.stops import IncrementalDecoder, StopScanner

CPU_CACHE_TOKENS = 8192  # KV cache on a CPU: a few long conversations of a small model
CPU_BATCH_TOKENS = 512  # tokens per forward on a CPU (prefills are split into chunks of this size)
PAGE_SIZE = 256  # the engine's default page (tokens per cache block)


@dataclass
class Served:
    """A model ready to answer: weights, tokenizer, the run's plan (None for a plain model folder)."""

    name: str
    model: object
    tokenizer: object
    plan: object
    system_prompt: str | None
    context: int  # tokens of prompt + answer one request may hold
    eos_ids: tuple[int, ...]


def load_served(path, *, dtype: str | None = None) -> Served:
    from runner.serve.generate import default_system_prompt, load_for_generation

    path = Path(path)
    if not path.is_dir() or not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise UserError(f"{path} is neither a run directory nor a model folder (no config.json or adapter_config.json)",
                        where=str(path), hint="pass a finished run's output.dir, its merged/ folder, or a Hugging "
                                              "Face model folder")
    model, tokenizer, plan = load_for_generation(path, dtype=dtype)
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"the tokenizer in {path} has no chat template: /v1/chat/completions could not render a "
                        "conversation", where=str(path),
                        hint="serve a run directory (it saves its template) or a model folder with chat_template.jinja")
    config = model.config.get_text_config()
    context = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
    if model.device.type == "cpu":
        context = min(context, CPU_CACHE_TOKENS)
    eos = {tokenizer.eos_token_id}
    gen_eos = model.generation_config.eos_token_id
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    eos_ids = tuple(sorted(i for i in eos if isinstance(i, int) and i >= 0))
    name = plan.name if plan is not None and getattr(plan, "name", None) else path.resolve().name
    return Served(name=name, model=model, tokenizer=tokenizer, plan=plan,
                  system_prompt=default_system_prompt(plan), context=context, eos_ids=eos_ids)


class Engine:
    """Requests in, text pieces out, batched on the device by the continuous-batching manager."""

    def __init__(self, served: Served, *, max_batch: int | None = None, seed: int | None = None):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.served = served
        model = served.model
        # Defaults that make the manager build the temperature, top-k and top-p processors; every
        # request then sets all three (per request), so these values are never used as such.
        generation = GenerationConfig(do_sample=True, temperature=0.5, top_p=0.5, top_k=50,
                                      eos_token_id=list(served.eos_ids) or -1,
                                      pad_token_id=served.tokenizer.pad_token_id)
        settings = dict(per_request_processors=True, seed=seed, max_requests_per_batch=max_batch)
        if model.device.type == "cpu":
            settings.update(num_blocks=-(-max(served.context, CPU_CACHE_TOKENS) // PAGE_SIZE) + 1,
                            max_batch_tokens=CPU_BATCH_TOKENS)
        # Rows of the logits: the largest top_k (transformers 5.17 does not clamp a larger one).
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        self.manager = model.init_continuous_batching(generation_config=generation,
                                                      continuous_batching_config=ContinuousBatchingConfig(**settings))
        self._routes: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._running = False
        self._router = threading.Thread(target=self._route_results, name="serve-results", daemon=True)

    def start(self) -> None:
        import torch

        with torch.inference_mode():  # the manager's thread keeps the caller's inference mode
            self.manager.start()
        self._running = True
        self._router.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is in flight (up to `timeout` seconds), then stop the device loop."""
        if not self._running:
            return
        self.manager.stop(block=True, timeout=timeout)
        self._running = False
        self._router.join(timeout=5)

    @property
    def in_flight(self) -> int:
        return len(self._routes)

    @property
    def healthy(self) -> bool:
        return self._running and self.manager.is_running()

    def _route_results(self) -> None:
        """One thread hands each output of the manager to the request waiting for it."""
        while self._running or self.manager.is_running():
            output = self.manager.get_result(timeout=0.1)
            if output is None:
                if not self.manager.is_running():
                    if not self._running:
                        return
                    time.sleep(0.1)  # the device loop died: get_result no longer waits
                continue
            with self._lock:
                route = self._routes.get(output.request_id)
            if route is not None:  # None: a request that was cancelled (its client left)
                loop, queue = route
                loop.call_soon_threadsafe(queue.put_nowait, output)

    def check_prompt(self, prompt_ids: list[int], sampling: Sampling) -> int:
        """max_tokens for this request, or a 413 when the prompt leaves no room to answer."""
        room = self.served.context - len(prompt_ids)
        if room < 1:
            raise ApiError(413, f"the prompt is {len(prompt_ids)} tokens; this model's context is "
                                f"{self.served.context} tokens. Shorten the conversation.",
                           param="messages", code="context_length_exceeded")
        if sampling.max_tokens is None:
            return room
        if sampling.max_tokens > room:
            raise ApiError(413, f"the prompt ({len(prompt_ids)} tokens) and max_tokens ({sampling.max_tokens}) exceed "
                                f"this model's context of {self.served.context} tokens; ask for at most {room}",
                           param="max_tokens", code="context_length_exceeded")
        return sampling.max_tokens

    async def generate(self, prompt_ids: list[int], sampling: Sampling, answer: Answer, *, stream: bool = True):
        """Yield the answer's text piece by piece; `answer` holds the finish reason and the counts
        once the generator is exhausted. A consumer that stops early cancels the request. Without
        `stream` and stop strings the manager reports the answer once, at its end."""
        max_tokens = self.check_prompt(prompt_ids, sampling)
        if not self.healthy:
            raise ApiError(503, "the server is shutting down", code="unavailable")
        if sampling.temperature == 0.0:
            per_request = dict(temperature=1.0, top_p=1.0, top_k=1)
        else:  # top_k = the vocabulary: no cut (the engine reads top_k 0 as 1)
            per_request = dict(temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=self.vocab)
        rid = f"r{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._routes[rid] = (asyncio.get_running_loop(), queue)
        decoder, stops = IncrementalDecoder(self.served.tokenizer), StopScanner(sampling.stop)
        answer.usage = Usage(prompt_tokens=len(prompt_ids))
        finished = False
        try:
            added = self.manager.add_request(prompt_ids, request_id=rid, max_new_tokens=max_tokens,
                                             streaming=stream or bool(sampling.stop), **per_request)
            if added is None:  # the manager stopped taking requests
                finished = True
                raise ApiError(503, "the server is shutting down", code="unavailable")
            while not finished:
                output = await queue.get()
                if output.error is not None:
                    raise ApiError(503 if not self.healthy else 500, f"generation failed: {output.error}")
                tokens = list(output.generated_tokens)
                finished = output.is_finished()
                ended_by_eos = finished and bool(tokens) and tokens[-1] in self.served.eos_ids
                answer.usage.completion_tokens = len(tokens)
                text = stops.feed(decoder.add(tokens[:-1] if ended_by_eos else tokens, final=finished))
                if finished:
                    text += stops.flush()
                if text:
                    answer.text += text
                    yield text
                if stops.stopped:
                    answer.finish_reason = "stop"
                    return
                if finished:
                    answer.finish_reason = "stop" if ended_by_eos else "length"
        finally:
            with self._lock:
                self._routes.pop(rid, None)
            if not finished:
                self.manager.cancel_request(rid)
