"""`runner generate RUN_DIR -p "..."`: answer with a trained run, rendered with the chat template
it trained on (saved with its tokenizer) and the same default system prompt. Without -p: a simple
interactive chat that keeps the conversation. Greedy unless --temperature is set; the model runs
in eval mode with its KV cache."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (adapter or full model) or its merged/ folder")
    parser.add_argument("-p", "--prompt", action="append", default=[], help="a user message (repeatable)")
    parser.add_argument("--system", default=None, help="system prompt (default: the training template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="an image for a vision-language run, placed before the prompt (repeatable)")


def run(args) -> int:
    from runner.quiet import quiet_for_run_dir

    quiet_for_run_dir(args.run_dir, getattr(args, "debug", False))
    if args.image:  # before the model loads: a wrong path fails at once
        from runner.serve.vision_generate import check_paths

        check_paths(args.image)
    model, tokenizer, plan = load_for_generation(args.run_dir)
    system = args.system if args.system is not None else default_system_prompt(plan)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.image:
        return _with_images(args, model, plan, system, options)
    if args.prompt:
        for prompt in args.prompt:
            answer = chat(model, tokenizer, [{"role": "user", "content": prompt}], system=system, plan=plan, **options)
            print(answer if len(args.prompt) == 1 else f">>> {prompt}\n{answer}\n")
        return 0
    return interactive(model, tokenizer, system=system, plan=plan, **options)


def _with_images(args, model, plan, system, options) -> int:
    from runner.errors import UserError
    from runner.serve import vision_generate

    if not vision_generate.is_vision_run(args.run_dir):
        raise UserError(f"{args.run_dir} is a text-only model: it cannot read images", where="--image")
    if not args.prompt:
        raise UserError("--image needs a prompt", where="--image", hint='add -p "What is in the image?"')
    processor = vision_generate.load_processor(args.run_dir)
    images = vision_generate.read_images(args.image, plan)
    for prompt in args.prompt:
        answer = vision_generate.chat(model, processor, [{"role": "user", "content": prompt}], images, system=system,
                                      plan=plan, **options)
        print(answer if len(args.prompt) == 1 else f">>> {prompt}\n{answer}\n")
    return 0


def default_system_prompt(plan) -> str | None:
    return plan.data.template.system_prompt if plan else None


def load_for_generation(run_dir, *, dtype: str | None = None):
    """(model in eval mode with cache, tokenizer, plan or None) for a run directory."""
    import torch
    from transformers import AutoTokenizer

    from runner.ship.merge import load_base_for_adapter, load_run_plan
    from runner.train.model import device_type

    run_dir = Path(run_dir)
    plan = load_run_plan(run_dir) if (run_dir / "plan.json").is_file() else None
    from runner.evaluate.reward_model import refuse_generation

    refuse_generation(plan, run_dir, "generate / chat / serve")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_base_for_adapter(plan, run_dir, tokenizer, dtype)
        # Merged in memory: same outputs as the adapter, plain Linear layers at inference speed.
        model = PeftModel.from_pretrained(base, run_dir).merge_and_unload()
    else:
        from transformers import AutoConfig

        from runner.train.vision import auto_class

        model = auto_class(AutoConfig.from_pretrained(run_dir)).from_pretrained(
            run_dir, dtype=getattr(torch, dtype) if dtype else "auto")
    device = device_type()
    if device != "cpu":
        model.to(device)
    model.config.use_cache = True
    model.eval()
    return model, tokenizer, plan


def prompt_inputs(tokenizer, messages, *, system=None, plan=None) -> dict:
    """The conversation rendered as in training (same template, same default system prompt),
    ending with the assistant header the model continues from."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    template_kwargs = {}
    thinking = plan.data.template.enable_thinking if plan else None
    if thinking is not None:
        template_kwargs["enable_thinking"] = thinking
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True, **template_kwargs)


def chat(model, tokenizer, messages, *, system=None, plan=None, max_new_tokens=256, temperature=0.0, top_p=1.0) -> str:
    import torch

    inputs = prompt_inputs(tokenizer, messages, system=system, plan=plan)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def interactive(model, tokenizer, *, system=None, plan=None, **options) -> int:
    print("chat with the model; /reset clears the conversation, /exit or Ctrl-D leaves", file=sys.stderr)
    history = []
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": text})
        answer = chat(model, tokenizer, history, system=system, plan=plan, **options)
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")
