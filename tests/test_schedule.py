"""The suite's scheduling list (conftest.LONGEST_FIRST) names test files that exist, once each:
a renamed file would otherwise drop silently to the end of the queue."""
import os

import conftest


def test_longest_first_names_existing_test_files_once():
  here = os.path.dirname(os.path.abspath(__file__))
  missing = [n for n in conftest.LONGEST_FIRST if not os.path.isfile(os.path.join(here, n))]
  assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"
  assert len(set(conftest.LONGEST_FIRST)) == len(conftest.LONGEST_FIRST)
