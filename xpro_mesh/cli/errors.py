"""The one error type the CLI prints as a single line."""


class CliError(Exception):
    """An operator-facing failure: bad input, bad config, missing privilege."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status
