"""Errors caused by the user's input (config, paths, data): main prints them as one line."""


class UserError(Exception):
  """Bad config value, missing path, unreadable data: message names the key/path/value."""


class PathNotFound(UserError, FileNotFoundError):
  """A file or folder the user named (or the config implies) does not exist."""
