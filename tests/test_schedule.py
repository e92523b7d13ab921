"""The suite's scheduling list (conftest.LONGEST_FIRST) names test files that exist, once each
(a renamed file would otherwise drop silently to the end of the queue), and the report that
re-measures it (schedule_report.py) times each file over all records."""
import os

import conftest


def test_longest_first_names_existing_test_files_once():
  here = os.path.dirname(os.path.abspath(__file__))
  missing = [n for n in conftest.LONGEST_FIRST if not os.path.isfile(os.path.join(here, n))]
  assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"
  assert len(set(conftest.LONGEST_FIRST)) == len(conftest.LONGEST_FIRST)


def test_report_gives_each_file_its_wall_time_over_workers(tmp_path):
  import json
  import schedule_report
  rows = {"gw0": [["start", "tests/test_a.py::t1", 10.0], ["end", "tests/test_a.py::t1", 12.0],
                  ["start", "tests/test_a.py::t2", 12.0], ["end", "tests/test_a.py::t2", 17.5],
                  ["start", "tests/test_b.py::t", 17.5], ["end", "tests/test_b.py::t", 18.0]],
          "gw1": [["start", "tests/test_c.py::t[x]", 10.0], ["end", "tests/test_c.py::t[x]", 13.0]]}
  for worker, events in rows.items():
    (tmp_path / f"{worker}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  assert schedule_report.file_wall_times(str(tmp_path)) == {
      "test_a.py": 7.5, "test_b.py": 0.5, "test_c.py": 3.0}
