"""`runner serve` for a vision-language run: image content parts answered through model.generate,
one request at a time (transformers' continuous-batching engine is text-only). It speaks to the
app as runner.serve.engine.Engine does: check_prompt, then generate as an async generator."""

from __future__ import annotations

import asyncio
import threading

from runner.serve.protocol import Answer, ApiError, Sampling, Usage


class VisionPrompt:
    """A chat request made ready for the processor: its inputs (tensors) and their length."""

    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class VisionEngine:
    reads_images = True

    def __init__(self, served, processor):
        self.served = served
        self.processor = processor
        self._lock = threading.Lock()  # one generation at a time on the model
        self._in_flight = 0
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self, timeout: float = 30.0) -> None:
        self._running = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def healthy(self) -> bool:
        return self._running

    def prompt(self, messages: list[dict]) -> VisionPrompt:
        """Messages as protocol.parse_chat gives them (images as data URLs beside `<image>` marks)."""
        from runner.data.media import load_image
        from runner.data.rowjson import RowError
        from runner.data.vlm import as_parts

        images = []
        for i, m in enumerate(messages):
            for ref in m.get("images") or []:
                try:
                    images.append(load_image(ref))
                except (RowError, OSError, ValueError, SyntaxError) as e:
                    raise ApiError(400, f"'messages[{i}]' holds an image that cannot be read: {e}",
                                   param=f"messages[{i}].content") from None
        plain = [{k: v for k, v in m.items() if k != "images"} for m in messages]
        system = self.served.system_prompt
        if system and not any(m["role"] == "system" for m in plain):
            plain = [{"role": "system", "content": system}, *plain]
        try:
            text = self.processor.apply_chat_template(as_parts(plain), add_generation_prompt=True, tokenize=False)
        except Exception as err:  # jinja's TemplateError and the like
            raise ApiError(400, f"the model's chat template refused these messages: {err}", param="messages") from None
        call = {"text": [text], "return_tensors": "pt"}
        if images:
            call["images"] = [images]
        try:
            return VisionPrompt(self.processor(**call))
        except ValueError as err:  # placeholder and image counts that disagree, and the like
            raise ApiError(400, f"the processor refused these messages: {err}", param="messages") from None

    def check_prompt(self, prompt: VisionPrompt, sampling: Sampling) -> int:
        room = self.served.context - len(prompt)
        if room < 1 or (sampling.max_tokens is not None and sampling.max_tokens > room):
            raise ApiError(413, f"the prompt is {len(prompt)} tokens with its images; this model's context is "
                                f"{self.served.context} tokens", param="messages", code="context_length_exceeded")
        return sampling.max_tokens if sampling.max_tokens is not None else room

    async def generate(self, prompt: VisionPrompt, sampling: Sampling, answer: Answer, *, stream: bool = True):
        max_tokens = min(self.check_prompt(prompt, sampling), 4096)
        if not self.healthy:
            raise ApiError(503, "the server is shutting down", code="unavailable")
        self._in_flight += 1
        try:
            text, produced, ended = await asyncio.to_thread(self._run, prompt, sampling, max_tokens)
        finally:
            self._in_flight -= 1
        cut = [text.index(s) for s in sampling.stop if s in text]
        if cut:
            text, ended = text[:min(cut)], True
        answer.usage = Usage(prompt_tokens=len(prompt), completion_tokens=produced)
        answer.text, answer.finish_reason = text, "stop" if ended else "length"
        if text:
            yield text

    def _run(self, prompt: VisionPrompt, sampling: Sampling, max_tokens: int):
        import torch

        model, tok = self.served.model, self.processor.tokenizer
        inputs = {k: v.to(model.device) for k, v in prompt.inputs.items()}
        options = ({"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
                   if sampling.temperature > 0 else {"do_sample": False})
        with self._lock, torch.inference_mode():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = model.generate(**inputs, max_new_tokens=max_tokens, use_cache=True, pad_token_id=tok.pad_token_id,
                                 eos_token_id=list(self.served.eos_ids) or tok.eos_token_id, **options)
        new = out[0][len(prompt):].tolist()
        ended = bool(new) and new[-1] in self.served.eos_ids
        return tok.decode(new, skip_special_tokens=True), len(new), ended
