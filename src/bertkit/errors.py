"""Errors a user can act on: each says what was wrong and where."""


class BertkitError(Exception):
    """Base class: every error bertkit raises on bad input."""


class ConfigError(BertkitError, ValueError):
    """A config field is missing, of the wrong type, or names a setting we do not support."""


class CheckpointError(BertkitError):
    """A weights file or model directory is missing, corrupt, or does not match the config."""


class InputFileError(BertkitError, ValueError):
    """An input file cannot be read; the message names file, line and problem."""

    def __init__(self, path: object, problem: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem
