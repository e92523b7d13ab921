"""Reading the JSON files a run leaves (results.json, config.json) as untrusted input."""
from __future__ import annotations

import json
from typing import Any


def read_object(path: str, error: type[Exception]) -> dict[str, Any]:
  """A JSON object from `path`; `error` naming the file when it cannot be read, is not UTF-8,
  is cut short or is not an object."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise error(f"{path}: unreadable: {e.strerror or e}") from None
  try:
    obj = json.loads(data.decode("utf-8-sig"))
  except UnicodeDecodeError as e:
    raise error(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                f"{e.start})") from None
  except json.JSONDecodeError as e:
    raise error(f"{path}: not valid JSON (truncated or damaged?): {e}") from None
  except (ValueError, RecursionError) as e:
    raise error(f"{path}: cannot be parsed: {type(e).__name__}: {e}") from None
  if not isinstance(obj, dict):
    raise error(f"{path}: holds a JSON {type(obj).__name__}, expected an object")
  return obj
