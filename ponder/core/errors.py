"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class PonderError(Exception):
    """A problem with the user's input (preset, key, value, file) rather than a bug."""
