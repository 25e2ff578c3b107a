"""`runner lint FILE...`: schema and semantic checks for many configs at once, no ML imports."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from runner.errors import ConfigErrors, UserError


@dataclass
class LintResult:
    path: str
    errors: list = field(default_factory=list)  # UserError
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def lint_file(path: str, overrides=(), deep: bool = False) -> LintResult:
    from runner.plan.resolve import make_plan

    result = LintResult(path)
    try:
        plan = make_plan(path, overrides)
        result.warnings = [_as_error(w) for w in plan.warnings]
        if deep:
            _deep_checks(plan, result)
    except ConfigErrors as err:
        result.errors, result.warnings = list(err.errors), list(err.warnings)
    except UserError as err:
        result.errors = [err]
    return result


def _deep_checks(plan, result: LintResult) -> None:
    """Checks that need the tokenizer (and so transformers): the template against the model's tokens."""
    from runner.data import check_template
    from runner.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(plan)
    except UserError as err:
        result.errors.append(err)
        return
    for finding in check_template(plan, tokenizer):
        severity, _, text = finding.partition(": ")
        entry = UserError(text, where=f"{result.path} (template)")
        (result.errors if severity == "error" else result.warnings).append(entry)


def _as_error(text: str) -> UserError:
    where, _, rest = text.partition(": ")
    return UserError(rest, where=where) if rest else UserError(text)


def lint_files(paths, overrides=(), deep: bool = False) -> list[LintResult]:
    return [lint_file(p, overrides, deep) for p in paths]


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="config files to check")
    p.add_argument("--format", choices=["text", "json"], default="text", help="json: one report for CI tools")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--deep", action="store_true",
                   help="also load each tokenizer and check the chat template against it (imports transformers)")


def _entry(e: UserError, severity: str) -> dict:
    return {"severity": severity, "where": e.where, "message": e.message, "hint": e.hint}


def run(args) -> int:
    if args.deep:  # the tokenizers load through transformers (and trl, torchao): their notices only with --debug
        from runner import quiet

        quiet.quiet_libraries(getattr(args, "debug", False))
    results = lint_files(args.files, deep=args.deep)
    failed = any(not r.ok or (args.strict and r.warnings) for r in results)
    if args.format == "json":
        report = [{"file": r.path, "ok": r.ok,
                   "problems": [_entry(e, "error") for e in r.errors] + [_entry(w, "warning") for w in r.warnings]}
                  for r in results]
        print(json.dumps(report, indent=2))
        return 2 if failed else 0
    for r in results:
        for e in r.errors:
            print(_line(e, "error"), file=sys.stderr)
        for w in r.warnings:
            print(_line(w, "warning"), file=sys.stderr)
        if r.ok:
            extra = f" ({len(r.warnings)} warning{'s' * (len(r.warnings) != 1)})" if r.warnings else ""
            print(f"ok: {r.path}{extra}")
    bad = sum(not r.ok for r in results)
    if bad:
        print(f"{bad} of {len(results)} file(s) failed", file=sys.stderr)
    return 2 if failed else 0


def _line(e: UserError, severity: str) -> str:
    text = f"{e.where}: {severity}: {e.message}" if e.where else f"{severity}: {e.message}"
    return text + (f"\n  hint: {e.hint}" if e.hint else "")
