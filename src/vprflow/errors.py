"""Errors that name the bad input, so a user can fix it without reading a traceback."""


class InputError(ValueError):
    """Bad user input: a config key, a manifest row, a missing file.

    The message must name the file, row or key at fault.
    """


class SettingError(InputError):
    """A bad value of one setting of a method; ``key`` is the setting's name. The method
    registry (``vprflow.registry``) prefixes the config key of the entry."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
