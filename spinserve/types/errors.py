"""Errors that carry a message meant for the user (the CLI and server print them as they are)."""


class SpinserveError(Exception):
    """Base of every error whose message is fit to show a user without a traceback."""


class ModelLoadError(SpinserveError):
    """A model could not be found, fetched, read or converted."""


class InvalidRequestError(SpinserveError, ValueError):
    """A request asks for something the engine cannot do (too long a prompt, bad values)."""
