"""Annotated segments from a delimited table (CSV / TSV), read into the ActivityNet layout that
localization.py and keyframes.py score against.

Why a table: keyframe annotations of real datasets (CTEN's Ekman-6 detection uses those of Gao
et al., ICMR 2017) are not in any source available to us, so their published layout cannot be
read verbatim; a researcher who holds them writes one row per annotated segment and the
evaluator reads that. One header row names the columns (any order, case-insensitive); every
other row is one segment:

  video        the builder's key ("Class/name", as in the eval split), required
  start, end   the segment in seconds, [start, end]
  start_frame, end_frame, fps
               or the segment as inclusive frame indices: [start_frame / fps, (end_frame + 1) / fps]
  duration     the video's length in seconds, or num_frames (with fps); one per video, equal on
               every row of that video
  label        optional (default "keyframe"; keyframe detection is class-agnostic)

A row whose start and end cells are both empty gives the video (and its duration) without a
segment. Lines starting with '#' and blank lines are skipped. Errors name the file, the line
and the column.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

from jaxaffect.evaluation import localization
from jaxaffect.evaluation.localization import LocalizationInputError

TABLE_SUFFIXES = (".csv", ".tsv")
DEFAULT_LABEL = "keyframe"


def is_table(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in TABLE_SUFFIXES


def read(path: str, *, subset: str = "test", what: str = "keyframe ground truth"
         ) -> dict[str, Any]:
  """The table at `path` -> {"database": {video: {subset, duration, annotations: [{segment,
  label}]}}}; LocalizationInputError naming the file, line and column on any bad cell."""
  text = localization.read_text(path, what)
  lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
           if line.strip() and not line.lstrip().startswith("#")]
  if not lines:
    raise LocalizationInputError(f"{what} file {path} holds no header row and no segments")
  delimiter = "\t" if path.lower().endswith(".tsv") else ","
  rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines)),
                         delimiter=delimiter))
  if len(rows) != len(lines):
    raise LocalizationInputError(f"{what} file {path}: a quoted cell spans lines; write one "
                                 f"segment per line")
  header = [h.strip().lower() for h in rows[0]]
  where0 = f"{path}:{lines[0][0]}"
  dup = sorted({h for h in header if header.count(h) > 1})
  if dup:
    raise LocalizationInputError(f"{where0}: column {dup[0]!r} appears twice in the header")
  has = set(header)
  if "video" not in has:
    raise LocalizationInputError(f"{where0}: the header {rows[0]!r} has no 'video' column")
  seconds, frames = {"start", "end"} <= has, {"start_frame", "end_frame", "fps"} <= has
  if seconds == frames:
    raise LocalizationInputError(
        f"{where0}: the header needs either start,end (seconds) or start_frame,end_frame,fps "
        f"(frames){', not both' if seconds else ''}; it has {rows[0]!r}")
  if "duration" not in has and not ("num_frames" in has and "fps" in has):
    raise LocalizationInputError(f"{where0}: the header needs a 'duration' column (seconds) "
                                 f"or num_frames with fps; it has {rows[0]!r}")
  col = {h: i for i, h in enumerate(header)}
  database: dict[str, dict] = {}
  first_line: dict[str, int] = {}  # a video's first row, named when a later one disagrees
  for (n, _), row in zip(lines[1:], rows[1:]):
    at = f"{path}:{n}"
    if len(row) != len(header):
      raise LocalizationInputError(f"{at}: {len(row)} cells, the header has {len(header)}")
    cell = {h: row[i].strip() for h, i in col.items()}

    def number(name: str) -> float:
      v = cell[name]
      try:
        x = float(v)
      except ValueError:
        raise LocalizationInputError(f"{at}: {name} = {v!r} is not a number") from None
      if not math.isfinite(x) or x < 0:
        raise LocalizationInputError(f"{at}: {name} = {v!r} is not a finite number >= 0")
      return x

    def rate() -> float:
      fps = number("fps")
      if fps == 0:
        raise LocalizationInputError(f"{at}: fps = {cell['fps']!r} must be > 0")
      return fps

    video = cell["video"]
    if not video:
      raise LocalizationInputError(f"{at}: the video cell is empty")
    duration = number("duration") if "duration" in cell else number("num_frames") / rate()
    if duration <= 0:
      raise LocalizationInputError(f"{at}: the duration of {video!r} is 0 s")
    entry = database.setdefault(video, {"subset": subset, "duration": duration,
                                        "annotations": []})
    first_line.setdefault(video, n)
    if not math.isclose(entry["duration"], duration, rel_tol=1e-9, abs_tol=1e-9):
      raise LocalizationInputError(
          f"{at}: {video!r} has duration {duration:g} s here and {entry['duration']:g} s on "
          f"line {first_line[video]}")
    ends = ("start", "end") if seconds else ("start_frame", "end_frame")
    if not cell[ends[0]] and not cell[ends[1]]:
      continue  # the video without a segment
    if seconds:
      s, e = number("start"), number("end")
    else:
      fps = rate()
      sf, ef = number("start_frame"), number("end_frame")
      if sf != int(sf) or ef != int(ef):
        raise LocalizationInputError(f"{at}: frame indices {cell['start_frame']!r}, "
                                     f"{cell['end_frame']!r} are not integers")
      s, e = sf / fps, (ef + 1) / fps
    if s >= e:
      raise LocalizationInputError(f"{at}: the segment [{s:g}, {e:g}] s of {video!r} is empty "
                                   f"or starts after it ends")
    if e > duration * (1 + 1e-6) + 1e-6:
      raise LocalizationInputError(f"{at}: the segment [{s:g}, {e:g}] s of {video!r} ends "
                                   f"after the video ({duration:g} s)")
    label = cell.get("label") or DEFAULT_LABEL
    entry["annotations"].append({"segment": [s, min(e, duration)], "label": label})
  if not any(entry["annotations"] for entry in database.values()):
    raise LocalizationInputError(f"{what} file {path} holds no annotated segment")
  return {"database": database}
