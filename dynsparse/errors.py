"""Errors that reach users as one clear line (CLI exit 2, HTTP 4xx), never as a traceback."""


class InputError(ValueError):
    """Bad user input: a wrong path, an unsupported architecture, bad data, a sparsity out of range."""


class CheckpointError(InputError):
    """A checkpoint directory that cannot be loaded; the message names the file and the problem."""
