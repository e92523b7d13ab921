"""Errors caused by the user's input (config, paths, data) or environment (a full or read-only
disk): main prints them as one line."""
from __future__ import annotations

import contextlib
import errno
import os


class UserError(Exception):
  """Bad config value, missing path, unreadable data: message names the key/path/value."""


class PathNotFound(UserError, FileNotFoundError):
  """A file or folder the user named (or the config implies) does not exist."""


class ConversionError(UserError, ValueError):
  """A checkpoint does not fit the target model; the message names every offending key."""


class WorkdirInUse(UserError):
  """Another live run holds the workdir's lock."""


class NoIntactCheckpoint(UserError):
  """Every checkpoint of a workdir failed to read or verify."""


def os_error_line(e: OSError, doing: str = "") -> str:
  """'cannot write /w/metrics.jsonl: No space left on device' from an OSError."""
  where = e.filename or ""
  what = doing or ("write" if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)
                   else "access")
  reason = e.strerror or os.strerror(e.errno) if e.errno else str(e)
  return f"cannot {what} {where}: {reason}".replace("  ", " ")


def one_line(e: BaseException) -> str:
  if isinstance(e, OSError) and not isinstance(e, UserError) and e.errno:
    return os_error_line(e)
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0]


@contextlib.contextmanager
def writing(path: str):
  """Turns an OSError of the block into one line naming `path` (a full or read-only disk)."""
  try:
    yield
  except OSError as e:
    if isinstance(e, UserError):
      raise
    if not e.filename:
      e.filename = path
    raise UserError(os_error_line(e, "write")) from None
