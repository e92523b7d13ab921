"""Test set-up: 8 emulated CPU devices and parsed absl flags (grain workers need them)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
  """One data dir for the smoke configs, shared by all tests (generated and extracted once,
  on first use by a test)."""
  return str(tmp_path_factory.mktemp("smoke_data"))
