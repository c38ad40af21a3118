"""User errors: bad models, bad options, unusable providers. Shown as one line, never a traceback."""

from __future__ import annotations

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_UNUSABLE_INPUT = 3


class NormfoldError(Exception):
    """A problem with the user's input that normfold reports as one line with an exit code.

    Bugs are other exception types and keep their traceback.
    """

    exit_code: int = EXIT_UNUSABLE_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code


def describe(error: BaseException, limit: int = 400) -> str:
    """Any exception's text on one line, capped, for messages about the user's files."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
