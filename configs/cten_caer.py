"""CTEN on CAER (Lee et al., ICCV 2019): 13,201 TV-show clips, 7 classes including Neutral,
the dataset's own train / validation / test folders (7:1:2 per class when the raw folder has
no split folders: README, "Data").

  python -m jaxaffect.main --config configs/cten_caer.py --workdir ... \\
      --config.dataset.manual_dir=/path/to/CAER   # {train,validation,test}/<Class>/<name>.avi
  ...:legacy, :legacy_visual as in configs/cten_ve8.py; :synthetic / :smoke run the same recipe
  on the VE-8-style synthetic set (8 classes).

The paper's text says six basic emotions for CAER; the dataset has seven (with Neutral) and
this config uses all seven. Model selection may read the validation split (eval_split), the
reported number is the test split's. Polarity (metrics only): Happy positive, Neutral counted
positive so the binary table stays defined (inferred; override --config.dataset.polarity).
Ablations: configs/cten_ve8.py's rows (--preset ablations).
"""
from jaxaffect import config_lib
from jaxaffect.data.emotion_datasets import CAER


def get_config(arg=None):
  a = config_lib.parse_arg(arg, legacy=False, legacy_visual=False, synthetic=False, smoke=False,
                           eval_split="test")
  flags = ",".join(k for k in ("legacy", "legacy_visual", "synthetic", "smoke") if a[k])
  c = config_lib.sibling_config(__file__, "cten_ve8.py", flags or None)
  if a.synthetic or a.smoke:
    return c  # the synthetic set is VE-8-style
  steps_per_epoch = CAER.steps_per_epoch(32)  # about 70% of 13,201 clips
  c.total_steps = 100 * steps_per_epoch
  c.checkpoint.every_steps = steps_per_epoch
  c.eval_every_steps = 10 * steps_per_epoch
  c.evals = dict(eval=dict(type="classification"))
  d = c.dataset
  CAER.apply(d)
  d.split = 1
  d.eval_split = a.eval_split
  return c


def get_sweeps():
  """configs/cten_ve8.py's rows: same model, same keys."""
  return config_lib.sibling_module(__file__, "cten_ve8.py").get_sweeps()
