"""The `runner` command. Each subcommand lives in its own module, imported only when chosen, so that
`runner lint` and `runner plan` never pay for (or import) torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from runner.errors import EXIT_USER_ERROR, ConfigErrors, UserError

COMMANDS = {
    "train": ("runner.train.command", "train a config (also: python -m runner cfg.yaml, accelerate launch -m runner cfg.yaml)"),
    "lint": ("runner.plan.lint", "check configs against the schema and for incompatible combinations"),
    "plan": ("runner.plan.show", "show every derived decision and the hashes"),
    "preprocess": ("runner.data.preprocess", "tokenize and cache the datasets; --show N prints samples"),
    "launch": ("runner.launch", "plan, then start the workers through Accelerate (multi-GPU / multi-node)"),
    "merge": ("runner.ship.merge", "merge a run's adapter into its base model"),
    "export": ("runner.ship.export", "write a run's merged model as GGUF (llama.cpp) or for Ollama"),
    "push": ("runner.ship.push", "upload a run (adapter or --merged model, card, template) to the Hugging Face Hub"),
    "generate": ("runner.serve.generate", "chat with a trained run, using its training template"),
    "eval": ("runner.evaluate.command", "score a run (or a config's base) on benchmarks with lm-evaluation-harness"),
    "predict": ("runner.evaluate.predict", "answer a dataset's prompts with a run; exact match, BLEU, ROUGE-L"),
    "serve": ("runner.serve.command", "an OpenAI-compatible HTTP API for a run or model folder"),
    "chat": ("runner.serve.chat_cli", "chat in the terminal, streaming (in-process or against runner serve)"),
    "sweep": ("runner.sweep.command", "run a W&B-format sweep (local optuna engine or W&B)"),
    "import": ("runner.importers", "translate an Axolotl or LLaMA-Factory config"),
    "ui": ("runner.ui.command", "a local web app: configure, train, watch, compare, evaluate, chat, export"),
    "schema": ("runner.config.docs", "print the config JSON Schema, or write docs/config.md"),
}


def _usage() -> str:
    lines = ["usage: runner COMMAND [options]   (runner COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "global options: --debug (show tracebacks)"]
    return "\n".join(lines)


def _print_user_error(err: UserError) -> None:
    if isinstance(err, ConfigErrors):
        for e in err.errors:
            print(_fmt(e, "error"), file=sys.stderr)
        for w in err.warnings:
            print(_fmt(w, "warning"), file=sys.stderr)
        n = len(err.errors)
        print(f"{n} error{'s' * (n != 1)}", file=sys.stderr)
    else:
        print(_fmt(err, "error"), file=sys.stderr)


def _fmt(e: UserError, severity: str) -> str:
    head = f"{e.where}: {severity}: {e.message}" if e.where else f"{severity}: {e.message}"
    return head + (f"\n  hint: {e.hint}" if e.hint else "")


# PyTorch's CUDA allocator with expandable segments: batches whose shapes change step to step do not
# fragment its cache into blocks too small to reuse (measured in docs/performance.md). Read once,
# when CUDA initialises, so it is set before any command can touch CUDA; a PYTORCH_CUDA_ALLOC_CONF
# of the user's own is kept.
CUDA_ALLOC_CONF = "expandable_segments:True"


def main(argv=None) -> int:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)
    code = 1
    try:
        code = _main(argv)
        return code
    except BrokenPipeError:  # `runner plan cfg.yaml | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        code = 141  # 128 + SIGPIPE, as a program the pipe ended would report
        return code
    finally:
        if "RUNNER_EXIT_DIR" in os.environ:  # started by `runner launch`: report this rank's own code
            from runner.launch import record_exit
            record_exit(code)


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else EXIT_USER_ERROR
    if argv[0] in ("-V", "--version"):
        from runner import __version__
        print(f"runner {__version__}")
        return 0
    if argv[0].endswith((".yaml", ".yml")):
        argv = ["train", *argv]
    command = argv[0]
    if command not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        print(f"error: unknown command {command!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        module = importlib.import_module(COMMANDS[command][0])
        parser = argparse.ArgumentParser(prog=f"runner {command}", description=COMMANDS[command][1])
        parser.add_argument("--debug", action="store_true", help="show tracebacks")
        module.add_arguments(parser)
        args = parser.parse_intermixed_args(argv[1:])  # options may sit between overrides
        args.debug = debug
        return int(module.run(args) or 0)
    except UserError as err:
        if debug:
            import traceback
            traceback.print_exc()
        _print_user_error(err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
