"""The error a user's own input causes (a value, a file, a request the model cannot read).

The CLI prints it as one line and exits with code 2, as it does for configuration mistakes;
its message names the value and where it came from.
"""


class InputError(ValueError):
    """Bad input: the message says which value, and from which file, line or flag."""
