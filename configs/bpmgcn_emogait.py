"""BPM-GCN on Emotion-Gait with the released code's recipe (TAC 2024).

  python -m jaxaffect.main --config configs/bpmgcn_emogait.py --workdir ... \
      --config.dataset.manual_dir=/path/to/Emotion-Gait      # the h5 files + label files
  ...:paper       the paper's text instead (lr 0.01, /10 every 30 epochs, 80 epochs)
  ...:synthetic   the generated synthetic gait set (same h5 layout, 4 classes)
  ...:smoke       a tiny variant that trains in seconds (tests)

Released code (defaults): SGD Nesterov 0.9, coupled weight decay 1e-3 on every parameter,
lr 0.075 divided by 10 at epochs 25/50/75/100, 125 epochs, batch 32 (1,959 training sequences ->
61 steps per epoch), fusion in the code's cascaded form, mean pooling. Differences from the code,
each a flag: padded frames are masked out of the movement stream (model.mask_padding; the code
differences across the zero padding); label indices are stored as integers and named by
dataset.extraction.label_mapping ("bpmgcn": Happy, Sad, Angry, Neutral; "step": Angry, Neutral, Happy, Sad),
a known ambiguity between the two papers. The held-out split is a seeded 9:1 split of all
sequences (dataset.extraction.split_seed); "best test accuracy over epochs", which the original
reports, is not computed: the final checkpoint is evaluated.
"""
from jaxaffect import config_lib

STEPS_PER_EPOCH = 1959 // 32


def get_config(arg=None):
  a = config_lib.parse_arg(arg, smoke=False, synthetic=False, paper=False)
  c = config_lib.base_config()
  c.method = "bpmgcn"
  c.seed = 4  # the released code's seed
  c.batch_size = 32
  c.eval_batch_size = 32
  c.total_steps = 125 * STEPS_PER_EPOCH
  c.optimizer.update(name="sgd", learning_rate=0.075, momentum=0.9, nesterov=True,
                     weight_decay=1e-3)
  c.schedule.update(name="step")
  c.schedule.boundaries = [e * STEPS_PER_EPOCH for e in (25, 50, 75, 100)]
  c.schedule.factors = [0.1, 0.1, 0.1, 0.1]
  c.checkpoint.every_steps = 5 * STEPS_PER_EPOCH
  c.log_every_steps = 20
  c.eval_every_steps = 25 * STEPS_PER_EPOCH

  d = c.dataset
  d.name = "synthetic_gait" if a.synthetic else "emotion_gait"
  d.manual_dir = ""
  d.auto_prepare = bool(a.synthetic)
  d.num_classes = 4
  d.num_frames = 48
  d.class_names = ("Happy", "Sad", "Angry", "Neutral")  # names of extraction.label_mapping
  d.synthetic = dict(seed=0, num_per_class=200)
  d.extraction = dict(num_frames=48, elmd_stride=5, split_seed=0, test_fraction=0.1,
                      label_mapping="bpmgcn")
  d.augment = dict(rotate_deg=0.0, scale_jitter=0.0)  # the code's random_move is not ported

  m = c.model
  m.fusion = "code"          # "code" (cascaded, released) | "paper" (product form) | "none"
  m.pooling = "mean"         # "mean" | "max"
  m.mask_padding = True      # False: the code's differences across zero padding

  c.loss = dict(affective_weight=1.0, mask_affective_padding=False)

  if a.paper:
    c.optimizer.learning_rate = 0.01
    c.total_steps = 80 * STEPS_PER_EPOCH
    c.schedule.boundaries = [e * STEPS_PER_EPOCH for e in (30, 60)]
    c.schedule.factors = [0.1, 0.1]
  if a.synthetic:
    # Measured (2 CPU cores, ~3.5 s/step): lr 0.01 reaches held-out top-1 0.8625 at step 300
    # (0.075 diverges on these raw, translating coordinates); the 0.90 target needs more work.
    c.total_steps = 300
    c.optimizer.learning_rate = 0.01
    c.schedule.boundaries = [200, 260]
    c.schedule.factors = [0.1, 0.1]
    c.checkpoint.every_steps = 100
    c.eval_every_steps = 100
  if a.smoke:
    c.total_steps = 3
    c.batch_size = 8
    c.eval_batch_size = 8
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 0
    d.name = "synthetic_gait"
    d.auto_prepare = True
    d.synthetic.update(num_per_class=6)
  return c
