"""Config of the test-only toy method (tests/toy_method.py): an MLP on an in-memory dataset."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import toy_method  # noqa: E402


def get_config(arg=None):
  del arg
  c = toy_method.toy_config()
  c.method = "toy_method:ToyMethod"
  c.checkpoint.every_steps = 2
  c.log_every_steps = 1
  return c
