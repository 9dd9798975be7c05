"""Errors that stop a command before any work, with one line naming the key, file or folder at fault.

Kept in a module of their own, importing nothing, so that light modules (tracking, predictions) can
raise them without loading the model stack.
"""


class ConfigError(ValueError):
    """A configuration problem, with the offending key or file in the message."""
