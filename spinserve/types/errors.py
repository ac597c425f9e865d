"""Errors that carry a message meant for the user (the CLI and server print them as they are)."""


class SpinserveError(Exception):
    """Base of every error whose message is fit to show a user without a traceback."""


class ModelLoadError(SpinserveError):
    """A model could not be found, fetched, read or converted."""


class InvalidRequestError(SpinserveError, ValueError):
    """A request asks for something the engine cannot do (too long a prompt, bad values).
    ``param``: the request field at fault, when one is (the server's 400 names it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
