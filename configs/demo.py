"""The embedded default: VAANet on the generated synthetic affect set, on a laptop CPU.

  python -m jaxaffect.main --config configs/demo.py --workdir /tmp/jaxaffect_demo

Generates the synthetic VE-8-style mp4 set (first run only), extracts frames + MFCCs into
ArrayRecord shards, trains a small VAANet (3D ResNet-10 visual stream of width 16, 4 snippets of
4 frames at 64 px, audio ResNet-18 of width 16 on 4 x 32 MFCC frames) and evaluates it on the
held-out split. Classes need both modalities: chance is 0.125.
  :smoke   a tiny variant that trains in seconds (tests)
Ablations: configs/vaanet_ve8.py's rows (--preset ablations).
"""
from jaxaffect import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, smoke=False)
  # Exactly configs/vaanet_ve8.py:synthetic (and :synthetic,smoke).
  return config_lib.sibling_config(__file__, "vaanet_ve8.py", "synthetic,smoke" if a.smoke
                                   else "synthetic")


def get_sweeps():
  return config_lib.sibling_module(__file__, "vaanet_ve8.py").get_sweeps()
