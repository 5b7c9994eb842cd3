"""The evaluation's exception tree: every error the command reports to the user."""

from __future__ import annotations


class EvalError(Exception):
    """An evaluation cannot go on; the message says why and what to do."""


class DataError(EvalError):
    """The task file or data set is missing, unreachable or not in DRACO's format."""


class MissingDependency(EvalError):
    """An optional package the evaluation needs is not installed."""

    def __init__(self, package: str, purpose: str) -> None:
        super().__init__(
            f"{package} is needed for {purpose}; install the evaluation extra: pip install 'openfusion[eval]'"
        )
