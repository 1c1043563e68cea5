"""The one exception type for user errors: the CLI prints its message as one line and exits non-zero."""


class BitladderError(ValueError):
    """Bad input: the message says what was wrong and what is accepted."""
