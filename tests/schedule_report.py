"""Per-file wall times of a test run recorded with JAXAFFECT_TEST_TIMELINE=DIR (conftest.py),
longest first, and the LONGEST_FIRST tuple for conftest.py to match them.

  JAXAFFECT_TEST_TIMELINE=/tmp/tl python -m pytest -q -n auto --dist loadfile tests
  python tests/schedule_report.py /tmp/tl [--top 30]
"""
import argparse
import glob
import json
import os


def file_wall_times(timeline_dir: str) -> dict[str, float]:
  """Test file name -> seconds from its first test's start to its last test's end (fixture
  set-up included), over the records (*.jsonl) in `timeline_dir`."""
  spans: dict[str, list[float]] = {}
  paths = sorted(glob.glob(os.path.join(timeline_dir, "*.jsonl")))
  if not paths:
    raise SystemExit(f"{timeline_dir}: no *.jsonl timeline (run the tests with "
                     "JAXAFFECT_TEST_TIMELINE set to this folder)")
  for path in paths:
    with open(path) as f:
      for n, line in enumerate(f, 1):
        try:
          kind, nodeid, t = json.loads(line)
        except ValueError as e:
          raise SystemExit(f"{path}:{n}: not a timeline record ({e})") from None
        name = os.path.basename(nodeid.split("::")[0])
        span = spans.setdefault(name, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
  return {name: b - a for name, (a, b) in spans.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("timeline_dir")
  p.add_argument("--top", type=int, default=30, help="files in LONGEST_FIRST (default 30)")
  a = p.parse_args()
  times = sorted(file_wall_times(a.timeline_dir).items(), key=lambda kv: -kv[1])
  for name, secs in times:
    print(f"{secs:8.1f} s  {name}")
  print(f"{sum(s for _, s in times):8.1f} s  in all, {len(times)} files\n")
  print("LONGEST_FIRST = (")
  for name, _ in times[:a.top]:
    print(f'    "{name}",')
  print(")")


if __name__ == "__main__":
  main()
