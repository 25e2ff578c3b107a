"""Errors meant for people: what is wrong, where, and what to do. The CLI prints them without a
traceback and exits with code 2."""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's config, data or environment that they can fix.

    `where` is a location a person can open: "cfg.yaml:12:5 (training.learning_rate)" or
    "data/train.jsonl:41". `hint` says what to do.
    """

    def __init__(self, message: str, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class ConfigErrors(UserError):
    """Several config problems found at once (all are reported, not only the first)."""

    def __init__(self, errors: list[UserError], warnings: list[UserError] | None = None):
        self.errors = errors
        self.warnings = warnings or []
        super().__init__("\n".join(str(e) for e in errors))


class DataError(UserError):
    """A malformed dataset row or file; `where` is "file:line"."""
