"""Errors caused by the user's input (config, paths, data): main prints them as one line."""


class UserError(Exception):
  """Bad config value, missing path, unreadable data: message names the key/path/value."""
