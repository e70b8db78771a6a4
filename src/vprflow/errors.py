"""Errors that name the bad input, so a user can fix it without reading a traceback."""


class InputError(ValueError):
    """Bad user input: a config key, a manifest row, a missing file.

    The message must name the file, row or key at fault.
    """
