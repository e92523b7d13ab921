"""Which raw video goes to which split: list files, the VE-8 workbook, the Ekman-6 rule, CAER's
split folders or its 7:1:2 rule.

The layouts people download:
  VE-8     <root>/<Class>/<name>.<ext> (1,101 videos; one basename sits in two classes) and the
           ten official splits, either as list files (trainlist%02d.txt: "Class/name <1-based
           idx>"; testlist%02d.txt: "Class/name", idx optional) or as the dataset's
           VideoEmotionDataset-TrainTestSplits.xlsx (one sheet per split, train and test name
           columns; names are basenames, so the class comes from the folder holding the file).
  Ekman-6  <root>/<class>/<id>.<ext> (1,637 videos, classes in lower case) plus CTEN's ID lists
           ("anger/1000 1"); without lists, the rule that produced them: sort all "class/id"
           strings and put every other one, starting with the first, into train (819/818).
  CAER     (Lee et al., ICCV 2019; 13,201 TV-show clips, 7 classes) as downloaded:
           <root>/{train,validation,test}/<Class>/<name>.avi; the split folders are the official
           split. File names can repeat across split folders (train/Anger/0001.avi and
           test/Anger/0001.avi are different clips), so keys carry the split folder:
           "train/Anger/0001", "validation/Anger/0001", "test/Anger/0001". Without split folders
           (<root>/<Class>/<name>.*): {train,validation,test}list01.txt ("Class/name" lines) in
           <root>/splits or <root> when present (or `split_file`), else the 7:1:2 rule per class
           (caer_ratio_split): names sorted as strings, the first floor(7n/10) to train, the next
           floor(8n/10) - floor(7n/10) to validation, the rest (at least 2n/10) to test; keys are
           then "Class/name". All seven class folders must exist (in each split folder).
VE-8 and Ekman-6 have train and test only (SPLITS); CAER adds validation (layout_splits).
classInd.txt is optional; when present it must list the expected classes. Class folders match
case-insensitively; keys always use the configured class names ("Class/name"), so the same
basename under two classes gives two examples.

Nothing here decodes media: a listed item either has a path or a reason why it is skipped.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from jaxaffect.data import emotion_datasets

VE8_CLASSES = emotion_datasets.VE8.class_names
EK6_CLASSES = emotion_datasets.EKMAN6.class_names
CAER_CLASSES = emotion_datasets.CAER.class_names
LAYOUT_CLASSES = {"ve8": VE8_CLASSES, "ekman6": EK6_CLASSES, "caer": CAER_CLASSES}
LAYOUTS = tuple(LAYOUT_CLASSES)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".flv", ".mkv", ".webm", ".mov", ".m4v", ".3gp", ".wmv",
                    ".mpg", ".mpeg")
VE8_WORKBOOK = "VideoEmotionDataset-TrainTestSplits.xlsx"
SPLITS = ("train", "test")  # VE-8 and Ekman-6 (their lists and workbook name no validation)
CAER_SPLITS = ("train", "validation", "test")
LAYOUT_SPLITS = {"ve8": SPLITS, "ekman6": SPLITS, "caer": CAER_SPLITS}
CAER_RULE = ("rule: 7:1:2 per class over names sorted as strings: the first floor(7n/10) to "
             "train, the next floor(8n/10) - floor(7n/10) to validation, the rest to test")


class RawLayoutError(ValueError):
  """The raw folder does not look like the expected layout; the message names the file."""


def layout_splits(layout: str) -> tuple[str, ...]:
  """The splits a layout's builds have: ("train", "test"), or CAER's three."""
  if layout not in LAYOUT_SPLITS:
    raise RawLayoutError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  return LAYOUT_SPLITS[layout]


@dataclasses.dataclass
class Item:
  key: str
  label: int
  path: str | None  # None: listed but no usable file.
  reason: str | None = None  # Set when the listing itself already disqualifies the item.


@dataclasses.dataclass
class SplitPlan:
  """Items per split plus what the manifest should say about how they were chosen."""
  items: dict[str, list[Item]]
  source: str                     # which file or rule defined the split
  unlisted: list[str]             # videos in the class folders that no split lists
  multi_class: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------ folders


def read_class_index(root) -> list[str]:
  """Class names in classInd.txt order ("1 Anger" lines)."""
  path = os.path.join(os.fspath(root), "classInd.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing class index file")
  names = {}
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not parts[0].isdigit():
        raise RawLayoutError(
            f"{path}:{lineno}: expected '<index> <Class>', got {line.strip()!r}")
      names[int(parts[0])] = parts[1]
  if sorted(names) != list(range(1, len(names) + 1)):
    raise RawLayoutError(f"{path}: indices must be 1..{len(names)}, got {sorted(names)}")
  return [names[i] for i in range(1, len(names) + 1)]


def check_class_index(root, class_names: Sequence[str]) -> str:
  """Validates an optional classInd.txt against the expected classes; returns what was used."""
  path = os.path.join(os.fspath(root), "classInd.txt")
  if not os.path.exists(path):
    return "built-in class list (no classInd.txt)"
  names = read_class_index(root)
  if [n.lower() for n in names] != [n.lower() for n in class_names]:
    raise RawLayoutError(f"{path} lists {names}, the config expects {list(class_names)}")
  return path


def class_folders(root, class_names: Sequence[str]) -> dict[str, str]:
  """Class name -> existing folder (exact name first, else the one case-insensitive match)."""
  root = os.fspath(root)
  entries = [e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))]
  folders = {}
  for name in class_names:
    if name in entries:
      folders[name] = os.path.join(root, name)
      continue
    matches = [e for e in entries if e.lower() == name.lower()]
    if len(matches) > 1:
      raise RawLayoutError(f"{root}: folders {matches} all match class {name!r}")
    if matches:
      folders[name] = os.path.join(root, matches[0])
  if not folders:
    raise RawLayoutError(f"{root}: no class folder found; expected {_expected(class_names)}")
  return folders


def _expected(class_names: Sequence[str]) -> str:
  return (f"one folder per class ({', '.join(class_names)}) holding video files "
          f"({', '.join(VIDEO_EXTENSIONS[:3])}, ...)")


def check_raw_folder(root, class_names: Sequence[str], layout: str = "ve8") -> dict[str, str]:
  """The videos of `root` ("Class/stem" -> path; "split/Class/stem" for CAER's split folders);
  RawLayoutError naming the folder when it is empty or its class folders hold no video (the
  split lists alone are not a dataset), or (CAER) a split or class folder is missing."""
  root = os.fspath(root)
  if layout == "caer":
    return _checked_caer(root, class_names)[0]
  if not os.listdir(root):
    raise RawLayoutError(f"{root}: the raw folder is empty; expected {_expected(class_names)}")
  folders = class_folders(root, class_names)
  videos = scan_videos(folders)
  if not videos:
    found = ", ".join(os.path.basename(f) for f in folders.values())
    raise RawLayoutError(f"{root}: the class folders ({found}) hold no video file; expected "
                         f"{_expected(class_names)}")
  return videos


def _video_stem(filename: str) -> str | None:
  """The name without its video extension, or None for a non-video file."""
  if filename.startswith("."):
    return None
  stem, ext = os.path.splitext(filename)
  return stem if ext.lower() in VIDEO_EXTENSIONS and stem else None


def scan_videos(folders: dict[str, str]) -> dict[str, str]:
  """"Class/stem" -> path of every video file in the class folders (one per stem).

  Stems keep inner dots ("clip.wmv.mp4" -> "clip.wmv", as VE-8's lists name such files); when
  one stem exists with several extensions the first in VIDEO_EXTENSIONS wins.
  """
  videos = {}
  rank = {e: i for i, e in enumerate(VIDEO_EXTENSIONS)}
  for cls, folder in folders.items():
    found: dict[str, tuple[int, str]] = {}
    for filename in os.listdir(folder):
      stem = _video_stem(filename)
      if stem is None or not os.path.isfile(os.path.join(folder, filename)):
        continue
      r = rank[os.path.splitext(filename)[1].lower()]
      if stem not in found or r < found[stem][0]:
        found[stem] = (r, os.path.join(folder, filename))
    for stem in sorted(found):
      videos[f"{cls}/{stem}"] = found[stem][1]
  return videos


def _lookup(videos: dict[str, str], key: str) -> str | None:
  """Path for "Class/name" where name may or may not carry the file's extension."""
  if key in videos:
    return videos[key]
  stem = _video_stem(key.rsplit("/", 1)[-1])
  if stem is not None:
    return videos.get(key.rsplit("/", 1)[0] + "/" + stem)
  return None


# ------------------------------------------------------------------------------ list files


def _parse_list_line(line: str) -> tuple[str, str | None]:
  """("Class/name", index or None) from "Class/name", "Class/name 3" (name may hold spaces)."""
  text = line.strip()
  m = re.fullmatch(r"(.*\S)\s+(\d+)", text)
  if m and "/" in m.group(1):
    return m.group(1).strip("/"), m.group(2)
  return text.strip("/"), None


def read_list_file(path: str, class_names: Sequence[str],
                   videos: dict[str, str]) -> list[Item]:
  """Items of one list file; labels come from the class folder named in each key."""
  index = {c.lower(): i for i, c in enumerate(class_names)}
  items, seen = [], set()
  with open(path, encoding="utf-8-sig") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      raw_key, idx = _parse_list_line(line)
      where = f"{path}:{lineno}"
      cls, _, name = raw_key.partition("/")
      if not name or cls.lower() not in index:
        why = f"{where}: class folder of {raw_key!r} is not one of {list(class_names)}"
        items.append(Item(raw_key, -1, None, why))
        continue
      label = index[cls.lower()]
      key = f"{class_names[label]}/{name}"
      if idx is not None and int(idx) != label + 1:
        why = f"{where}: listed index {idx} != {label + 1} for class {class_names[label]}"
        items.append(Item(key, label, None, why))
        continue
      if key in seen:
        items.append(Item(key, label, None, f"{where}: duplicate entry {key!r}"))
        continue
      seen.add(key)
      found = _lookup(videos, key)
      items.append(Item(key, label, found, None if found else
                        f"{key}.*: listed in {where} but no video file in the class folder"))
  return items


def read_split_list(root, split: str, split_index: int, class_names: Sequence[str]) -> list[Item]:
  """Items of <root>/splits/{split}list%02d.txt (kept for callers of the first version)."""
  root = os.fspath(root)
  path = os.path.join(root, "splits", f"{split}list{split_index:02d}.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing split list")
  return read_list_file(path, class_names, scan_videos(class_folders(root, class_names)))


def _find_lists(dirs: Iterable[str], split_index: int,
                splits: Sequence[str] = SPLITS) -> tuple[str, ...] | None:
  """The first folder's {split}list%02d.txt files, one per split, when all of them exist."""
  for d in dirs:
    pair = tuple(os.path.join(d, f"{s}list{split_index:02d}.txt") for s in splits)
    if all(os.path.isfile(p) for p in pair):
      return pair
  return None


# ------------------------------------------------------------------------------ workbook


def _cell_name(value) -> str:
  """Workbook cell -> video name ('' for empty); numeric names lose the spreadsheet's '.0'."""
  if value is None:
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def _pick_sheet(sheets, split_index: int, path: str):
  """The sheet titled with this split's number if exactly one is, else the split_index-th."""
  titled = [ws for ws in sheets if [int(x) for x in re.findall(r"\d+", ws.title)] == [split_index]]
  if len(titled) == 1:
    return titled[0]
  if len(sheets) >= split_index:
    return sheets[split_index - 1]
  raise RawLayoutError(f"{path}: no sheet for split {split_index} "
                       f"(sheets: {[ws.title for ws in sheets]})")


_HEADER_SUFFIX = r"(set|list|videos?|samples?|names?|data)?"


def _header_kind(value) -> str | None:
  """"train"/"test" for header cells such as "Training videos (732)", else None.

  Letters only, matched as a whole, so video names such as "TerrorTrain" are not headers.
  """
  if not isinstance(value, str):
    return None
  word = re.sub(r"[^a-z]", "", value.lower())
  for kind, stem in (("train", "train(ing)?"), ("test", "test(ing)?")):
    if re.fullmatch(stem + _HEADER_SUFFIX, word):
      return kind
  return None


def _name_columns(rows: list[tuple]) -> tuple[int, int, int]:
  """(train column, test column, first data row), 0-based.

  A header row (within the first five) with a "train..." cell and a "test..." cell decides;
  otherwise the layout CTEN's tools/SplitTrainTest.py reads: names in columns C and D from the
  third row on.
  """
  for r, row in enumerate(rows[:5]):
    kinds = [_header_kind(v) for v in row]
    if "train" in kinds and "test" in kinds:
      return kinds.index("train"), kinds.index("test"), r + 1
  return 2, 3, 2


def read_split_workbook(path: str,
                        split_index: int) -> tuple[dict[str, list[tuple[str, str]]], str]:
  """({"train": [(name, where)], "test": [...]}, sheet title) from the VE-8 split workbook."""
  import openpyxl  # Deferred: only the workbook path needs it.
  if path.lower().endswith(".xls"):
    raise RawLayoutError(f"{path}: old .xls format; save it as .xlsx")
  try:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as e:  # zipfile/openpyxl raise many types for a damaged file.
    raise RawLayoutError(f"{path}: cannot read workbook: {type(e).__name__}: {e}") from e
  try:
    ws = _pick_sheet(wb.worksheets, split_index, path)
    rows = [tuple(row) for row in ws.iter_rows(values_only=True)]
    title = ws.title
  finally:
    wb.close()
  train_col, test_col, start = _name_columns(rows)
  names: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
  for r in range(start, len(rows)):
    row = rows[r]
    for split, col in (("train", train_col), ("test", test_col)):
      name = _cell_name(row[col]) if col < len(row) else ""
      if name:
        where = f"{path} sheet {title!r} cell {_column_letter(col)}{r + 1}"
        names[split].append((name, where))
  if not names["train"] or not names["test"]:
    raise RawLayoutError(f"{path}: sheet {title!r} has no train or no test names "
                         f"(columns {_column_letter(train_col)}/{_column_letter(test_col)})")
  return names, title


def _column_letter(col: int) -> str:
  letters = ""
  col += 1
  while col:
    col, rem = divmod(col - 1, 26)
    letters = chr(ord("A") + rem) + letters
  return letters


def _items_from_names(names: list[tuple[str, str]], class_names: Sequence[str],
                      videos: dict[str, str], multi_class: dict[str, list[str]]) -> list[Item]:
  """Basenames (or "Class/name") -> items; a basename in k class folders gives k items."""
  by_stem: dict[str, list[str]] = {}
  for key in videos:
    cls, stem = key.split("/", 1)
    by_stem.setdefault(stem, []).append(cls)
  label_of = {c: i for i, c in enumerate(class_names)}
  lower = {c.lower(): c for c in class_names}
  items, seen = [], set()
  for name, where in names:
    if "/" in name and name.split("/", 1)[0].lower() in lower:
      cls, rest = name.split("/", 1)
      keys = [f"{lower[cls.lower()]}/{rest}"]
    else:
      stem = name if name in by_stem else (_video_stem(name) or name)
      keys = [f"{cls}/{stem}" for cls in by_stem.get(stem, [])]
      if len(keys) > 1:
        multi_class[stem] = [k.split("/", 1)[0] for k in keys]
      if not keys:
        items.append(Item(f"?/{name}", -1, None,
                          f"{where}: {name!r} matches no video in the class folders"))
        continue
    for key in keys:
      if key in seen:
        continue  # Listed twice, or a multi-class basename listed once per class.
      seen.add(key)
      label = label_of[key.split("/", 1)[0]]
      found = _lookup(videos, key)
      items.append(Item(key, label, found, None if found else
                        f"{key}.*: listed at {where} but no video file in the class folder"))
  return items


# ------------------------------------------------------------------------------ plans


def _drop_train_test_overlap(items: dict[str, list[Item]],
                             splits: Sequence[str] = SPLITS) -> None:
  """A video listed in two splits stays in the later one only (test over validation over
  train: no leak into the reported accuracy)."""
  for i, split in enumerate(splits):
    for later in splits[i + 1:]:
      later_keys = {it.key for it in items[later] if it.path is not None}
      for item in items[split]:
        if item.key in later_keys and item.reason is None:
          item.path, item.reason = None, (f"{item.key}: listed in both {split} and {later}; "
                                          f"kept in {later} only")


def _unlisted(videos: dict[str, str], items: dict[str, list[Item]]) -> list[str]:
  listed = {i.key for split in items.values() for i in split}
  return sorted(k for k in videos if k not in listed)


def ekman6_alternating(keys: Iterable[str]) -> dict[str, list[str]]:
  """CTEN's Ekman-6 rule: sort "class/id" strings, every other one from the first -> train."""
  ordered = sorted(keys)
  return {"train": ordered[0::2], "test": ordered[1::2]}


def _resolve(root: str, split_file: str) -> str:
  path = os.path.expanduser(split_file)
  return path if os.path.isabs(path) else os.path.join(root, path)


def plan_split(root, *, layout: str, split_index: int, class_names: Sequence[str],
               split_file: str = "") -> SplitPlan:
  """Items per split (layout_splits(layout)) of one raw folder (module docstring: the rules).

  `split_file`: a .xlsx workbook or a folder holding {train,test}list%02d.txt, absolute or
  relative to `root`. Empty: look for the lists in <root>/splits and <root>, then (VE-8) for
  the workbook in <root> and <root>/splits; Ekman-6 without lists uses the alternating rule.
  CAER: its split folders when present (then `split_file` must be empty), else three lists
  ({train,validation,test}list01.txt), else the 7:1:2 rule.
  """
  root = os.fspath(root)
  if layout not in LAYOUTS:
    raise RawLayoutError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  index_source = check_class_index(root, class_names)
  if layout == "caer":
    return _plan_caer(root, split_index, class_names, split_file, index_source)
  videos = check_raw_folder(root, class_names)
  folders = class_folders(root, class_names)
  notes = [f"classes: {index_source}"]
  missing = [c for c in class_names if c not in folders]
  if missing:
    notes.append(f"no folder for classes {missing}")
  multi_class: dict[str, list[str]] = {}
  items: dict[str, list[Item]]
  workbook = lists = None
  if split_file:
    path = _resolve(root, split_file)
    if os.path.isdir(path):
      lists = _find_lists([path], split_index)
      if lists is None:
        raise FileNotFoundError(f"{path}: no trainlist{split_index:02d}.txt/testlist"
                                f"{split_index:02d}.txt in this split folder")
    elif os.path.isfile(path):
      workbook = path
    else:
      raise FileNotFoundError(f"{path}: split file not found")
  else:
    lists = _find_lists([os.path.join(root, "splits"), root], split_index)
    if lists is None and layout == "ve8":
      candidates = [os.path.join(d, VE8_WORKBOOK) for d in (root, os.path.join(root, "splits"))]
      workbook = next((p for p in candidates if os.path.isfile(p)), None)
      if workbook is None:
        raise FileNotFoundError(
            f"{root}: no split for split {split_index}: expected splits/trainlist{split_index:02d}"
            f".txt + testlist{split_index:02d}.txt or {VE8_WORKBOOK} (or set split_file)")
  if lists is not None:
    items = {s: read_list_file(p, class_names, videos) for s, p in zip(SPLITS, lists)}
    source = " + ".join(lists)
  elif workbook is not None:
    names, title = read_split_workbook(workbook, split_index)
    items = {s: _items_from_names(names[s], class_names, videos, multi_class) for s in SPLITS}
    source = f"{workbook} sheet {title!r}"
  else:  # Ekman-6 without lists.
    if split_index != 1:
      raise RawLayoutError(f"Ekman-6 has a single split; got split {split_index}")
    label_of = {c: i for i, c in enumerate(class_names)}
    members = ekman6_alternating(videos)
    items = {s: [Item(k, label_of[k.split("/", 1)[0]], videos[k]) for k in members[s]]
             for s in SPLITS}
    source = "rule: sorted class/id, every other one from the first to train (CTEN RenameEk6)"
    if len(videos) != 1637:
      notes.append(f"alternating rule applied to {len(videos)} videos, not the full 1,637: "
                   "membership can differ from CTEN's lists; put trainlist01.txt/testlist01.txt "
                   "in <root>/splits to use those")
  _drop_train_test_overlap(items)
  return SplitPlan(items=items, source=source, unlisted=_unlisted(videos, items),
                   multi_class=multi_class, notes=notes)


# ------------------------------------------------------------------------------ CAER


def _caer_expected(class_names: Sequence[str]) -> str:
  return (f"CAER's split folders {'/, '.join(CAER_SPLITS)}/ each holding one folder per class "
          f"({', '.join(class_names)}) of .avi files, or the class folders alone")


def _dirs(folder: str) -> list[str]:
  return sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))


def caer_split_folders(root, class_names: Sequence[str] = CAER_CLASSES) -> dict[str, str] | None:
  """Split -> folder when `root` holds CAER's split folders (names case-insensitive), None when
  it holds none of them. RawLayoutError naming the folder when only some are there, or when
  class folders sit beside them."""
  root = os.fspath(root)
  entries = _dirs(root)
  found = {}
  for split in CAER_SPLITS:
    matches = [e for e in entries if e.lower() == split]
    if len(matches) > 1:
      raise RawLayoutError(f"{root}: folders {matches} all match split {split!r}")
    if matches:
      found[split] = os.path.join(root, matches[0])
  if not found:
    return None
  missing = [s for s in CAER_SPLITS if s not in found]
  if missing:
    raise RawLayoutError(
        f"{os.path.join(root, missing[0])}: split folder missing; CAER's split layout needs "
        f"{', '.join(CAER_SPLITS)} (found {', '.join(found)})")
  lower = {c.lower() for c in class_names}
  mixed = [e for e in entries if e.lower() in lower]
  if mixed:
    raise RawLayoutError(
        f"{os.path.join(root, mixed[0])}: class folder next to the split folders "
        f"{', '.join(found)}; expected either <split>/<Class>/ or <Class>/ only")
  return found


def _caer_class_folders(folder: str, class_names: Sequence[str]) -> dict[str, str]:
  """Class -> folder in `folder` (case-insensitive); RawLayoutError naming a missing one."""
  folders = {}
  entries = _dirs(folder)
  for name in class_names:
    matches = [name] if name in entries else [e for e in entries if e.lower() == name.lower()]
    if len(matches) > 1:
      raise RawLayoutError(f"{folder}: folders {matches} all match class {name!r}")
    if matches:
      folders[name] = os.path.join(folder, matches[0])
  missing = [c for c in class_names if c not in folders]
  if len(missing) == len(class_names):
    raise RawLayoutError(f"{folder}: no class folder found; expected {_caer_expected(class_names)}")
  if missing:
    raise RawLayoutError(
        f"{os.path.join(folder, missing[0])}: class folder missing (CAER needs all of "
        f"{', '.join(class_names)}; missing: {', '.join(missing)})")
  return folders


def scan_caer(root, class_names: Sequence[str] = CAER_CLASSES
              ) -> tuple[dict[str, str], dict[str, str] | None]:
  """(videos, split folders): "split/Class/stem" -> path under CAER's split folders, else
  "Class/stem" -> path of the class folders in `root` (split folders None)."""
  root = os.fspath(root)
  splits = caer_split_folders(root, class_names)
  if splits is None:
    return scan_videos(_caer_class_folders(root, class_names)), None
  videos = {}
  for split, folder in splits.items():
    for key, path in scan_videos(_caer_class_folders(folder, class_names)).items():
      videos[f"{split}/{key}"] = path
  return videos, splits


def _checked_caer(root: str, class_names: Sequence[str]
                  ) -> tuple[dict[str, str], dict[str, str] | None]:
  """scan_caer, with RawLayoutError naming `root` when it is empty or holds no video."""
  if not os.listdir(root):
    raise RawLayoutError(f"{root}: the raw folder is empty; expected {_caer_expected(class_names)}")
  videos, split_folders = scan_caer(root, class_names)
  if not videos:
    raise RawLayoutError(f"{root}: the CAER class folders hold no video file; expected "
                         f"{_caer_expected(class_names)}")
  return videos, split_folders


def caer_ratio_split(keys: Iterable[str]) -> dict[str, list[str]]:
  """CAER's 7:1:2 rule per class, deterministic: a class's n "Class/name" keys sorted as strings,
  the first floor(7n/10) to train, the next floor(8n/10) - floor(7n/10) to validation, the rest
  to test (so test takes the rounding remainder; n=10 -> 7/1/2, n=13 -> 9/1/3, n=3 -> 2/0/1)."""
  by_class: dict[str, list[str]] = {}
  for key in sorted(keys):
    by_class.setdefault(key.split("/", 1)[0], []).append(key)
  out: dict[str, list[str]] = {s: [] for s in CAER_SPLITS}
  for members in by_class.values():
    n = len(members)
    a, b = 7 * n // 10, 8 * n // 10
    out["train"] += members[:a]
    out["validation"] += members[a:b]
    out["test"] += members[b:]
  return out


def _plan_caer(root: str, split_index: int, class_names: Sequence[str], split_file: str,
               index_source: str) -> SplitPlan:
  if split_index != 1:
    raise RawLayoutError(f"CAER has a single split; got split {split_index}")
  videos, split_folders = _checked_caer(root, class_names)
  label_of = {c: i for i, c in enumerate(class_names)}
  notes = [f"classes: {index_source}"]
  if split_folders is not None:
    if split_file:
      raise RawLayoutError(f"{root}: holds CAER's split folders, which define the split; "
                           f"split_file={split_file!r} would be ignored, unset it")
    items = {s: [] for s in CAER_SPLITS}
    for key, path in videos.items():
      split, class_key = key.split("/", 1)
      items[split].append(Item(key, label_of[class_key.split("/", 1)[0]], path))
    source = "split folders: " + ", ".join(split_folders[s] for s in CAER_SPLITS)
    return SplitPlan(items=items, source=source, unlisted=[], notes=notes)
  if split_file:
    path = _resolve(root, split_file)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path}: not a folder holding trainlist01.txt, validationlist01"
                              ".txt and testlist01.txt (CAER's split_file is such a folder)")
    lists = _find_lists([path], split_index, CAER_SPLITS)
    if lists is None:
      raise FileNotFoundError(f"{path}: no trainlist01.txt/validationlist01.txt/testlist01.txt "
                              "in this split folder")
  else:
    lists = _find_lists([os.path.join(root, "splits"), root], split_index, CAER_SPLITS)
  if lists is not None:
    items = {s: read_list_file(p, class_names, videos) for s, p in zip(CAER_SPLITS, lists)}
    source = " + ".join(lists)
  else:
    members = caer_ratio_split(videos)
    items = {s: [Item(k, label_of[k.split("/", 1)[0]], videos[k]) for k in members[s]]
             for s in CAER_SPLITS}
    source = CAER_RULE
    empty = [s for s in CAER_SPLITS if not items[s]]
    if empty:
      notes.append(f"7:1:2 rule on {len(videos)} videos leaves {', '.join(empty)} empty")
  _drop_train_test_overlap(items, CAER_SPLITS)
  return SplitPlan(items=items, source=source, unlisted=_unlisted(videos, items), notes=notes)
