"""User-facing errors: each renders as one line that names where the problem is and what was expected."""

from __future__ import annotations


class TapirError(Exception):
    """An error caused by the user's input or configuration.

    The CLI prints ``str(err)`` as a single line and exits with code 2, without a traceback.
    """


class DataError(TapirError):
    """A record in an input file is malformed.

    Rendered as ``<file>:<where>: field '<field>': <expected>`` where ``where`` is ``line N`` for
    line-oriented files and ``record N`` for JSON arrays and datasets.
    """

    def __init__(self, path: str, where: str | None, field: str | None, message: str):
        self.path, self.where, self.field, self.message = str(path), where, field, message
        parts = [self.path]
        if where:
            parts.append(where)
        text = ":".join(parts) + ": "
        if field:
            text += f"field '{field}': "
        super().__init__(text + message)

    def as_rejection(self) -> dict:
        return {"file": self.path, "where": self.where, "field": self.field, "reason": self.message}


class ConfigError(TapirError):
    """A configuration value is invalid (names the config key)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config '{key}': {message}")


class BudgetExceeded(TapirError):
    """More oracle requests failed in a step than its failure budget allows."""
