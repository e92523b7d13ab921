"""CTEN on Ekman-6 (Xu et al., TAC 2016): 1,637 videos, 819 train / 818 test (CTEN's lists, or
every other video of the sorted list when the lists are absent).

  python -m jaxaffect.main --config configs/cten_ekman6.py --workdir ... \\
      --config.dataset.manual_dir=/path/to/Ekman6   # <class>/<id>.<ext> (+ optional splits/)
  ...:legacy, :legacy_visual as in configs/cten_ve8.py; :synthetic / :smoke run the same recipe
  on the VE-8-style synthetic set (8 classes).
  ...:keyframe_annotations=FILE   also score the weakly supervised keyframe detection (the
      paper's Table 3: mAP at tIoU 0.1-0.5) after the last step against FILE, an ActivityNet
      JSON or a segment table (.csv/.tsv, jaxaffect/evaluation/segment_table.py)

Same model and recipe as configs/cten_ve8.py (the released code trains every dataset alike).
Polarity (for the polarity metrics only; CTEN's loss is plain CE): joy and surprise positive, as
configs/vaanet_ekman6.py. Ablations: configs/cten_ve8.py's rows (--preset ablations).
"""
from jaxaffect import config_lib
from jaxaffect.data.emotion_datasets import EKMAN6


def get_config(arg=None):
  a = config_lib.parse_arg(arg, legacy=False, legacy_visual=False, synthetic=False, smoke=False,
                           keyframe_annotations="")
  flags = ",".join(k for k in ("legacy", "legacy_visual", "synthetic", "smoke") if a[k])
  c = config_lib.sibling_config(__file__, "cten_ve8.py", flags or None)
  if a.keyframe_annotations:
    c.evals.keyframes = dict(type="cten_keyframes", every_steps=0,
                             ground_truth=a.keyframe_annotations)
  if a.synthetic or a.smoke:
    return c  # the synthetic set is VE-8-style
  steps_per_epoch = EKMAN6.steps_per_epoch(32)
  c.total_steps = 100 * steps_per_epoch
  c.checkpoint.every_steps = steps_per_epoch
  c.eval_every_steps = 10 * steps_per_epoch
  EKMAN6.apply(c.dataset)
  c.dataset.split = 1
  return c


def get_sweeps():
  """configs/cten_ve8.py's rows: same model, same keys."""
  return config_lib.sibling_module(__file__, "cten_ve8.py").get_sweeps()
