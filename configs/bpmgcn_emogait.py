"""BPM-GCN on Emotion-Gait with the released code's recipe (TAC 2024).

  python -m jaxaffect.main --config configs/bpmgcn_emogait.py --workdir ... \
      --config.dataset.manual_dir=/path/to/Emotion-Gait      # the h5 files + label files
  ...:paper       the paper's text instead (lr 0.01, /10 every 30 epochs, 80 epochs)
  ...:synthetic   the generated synthetic gait set (same h5 layout, 4 classes)
  ...:smoke       a tiny variant that trains in seconds (tests; 5 of the 10 blocks)

Released code (defaults): SGD Nesterov 0.9, coupled weight decay 1e-3 on every parameter,
lr 0.075 divided by 10 at epochs 25/50/75/100, 125 epochs, batch 32 (1,959 training sequences ->
61 steps per epoch), fusion in the code's cascaded form, mean pooling. Differences from the code,
each a flag: padded frames are masked out of the movement stream (model.mask_padding; the code
differences across the zero padding); label indices are stored as integers and named by
dataset.extraction.label_mapping ("bpmgcn": Happy, Sad, Angry, Neutral; "step": Angry, Neutral, Happy, Sad),
a known ambiguity between the two papers. The held-out split is a seeded 9:1 split of all
sequences (dataset.extraction.split_seed); the final checkpoint is evaluated on it (results.json:
eval/top1, eval/mean_class_accuracy, eval/accuracy/<class>, eval/confusion). The original's
"best test accuracy over epochs" (max over the test evaluations made during training, i.e.
selected on the test split) is only reported under that name, by
`python -m jaxaffect.tools.best_over_evals WORKDIR` from metrics.jsonl (set eval_every_steps to
STEPS_PER_EPOCH for the original's per-epoch evaluations).
Ablations: model.streams, model.fusion, model.affective_head + loss.affective_weight; get_sweeps()
below lists the paper's rows (python -m jaxaffect.tools.sweep --config ... --preset ablations).
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
  # top-1, mean-class, per-class accuracy and the confusion matrix on the test split.
  c.evals = dict(eval=dict(type="classification"))

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
  # Skeleton centring, train and eval (jaxaffect/methods/bpmgcn/data.py): "none" (raw, as the
  # released feeder) | "root" (per-frame root-relative) | "sequence" (clip moved to the origin).
  d.center = "none"

  m = c.model
  m.fusion = "code"          # "code" (cascaded, released) | "paper" (product form) | "none"
  m.pooling = "mean"         # "mean" | "max"
  m.mask_padding = True      # False: the code's differences across zero padding
  # Ablations (get_sweeps below): one stream alone needs fusion="none";
  # affective_head=False removes fc2_aff (then loss.affective_weight must be 0).
  m.streams = "both"         # "both" | "posture" | "movement"
  m.affective_head = True
  m.num_blocks = 10          # the first N of the 10 GCN blocks per stream (10 = the paper)
  m.dtype = "float32"         # compute dtype ("bfloat16"); params, BN statistics, logits float32

  c.loss = dict(affective_weight=1.0, mask_affective_padding=False)

  if a.paper:
    c.optimizer.learning_rate = 0.01
    c.total_steps = 80 * STEPS_PER_EPOCH
    c.schedule.boundaries = [e * STEPS_PER_EPOCH for e in (30, 60)]
    c.schedule.factors = [0.1, 0.1]
  if a.synthetic:
    # A short recipe for the synthetic walkers, which translate over about +-6 units while their
    # posture varies by tenths: per-frame root centring (a documented deviation from the raw
    # coordinates of the released feeder), lr 0.02 with 10 warm-up steps and cosine decay to 0
    # over 200 steps. Chosen on two independent synthetic draws (dataset.synthetic.seed 1 and 2,
    # their own held-out 10%), never on this config's seed-0 test split: raw coordinates with
    # lr 0.01 step / 0.02 cosine / 0.075 step gave 0.76-0.93 there, root centring 0.94-0.99.
    # Measured on the seed-0 held-out split (80 gaits): top-1 0.9125 (73/80) at step 200,
    # mean class accuracy 0.93; 2 CPU cores, ~3.3 s/step alone, compile ~40 s (17 min wall
    # while another training shared the cores for its first half).
    d.center = "root"
    c.total_steps = 200
    c.optimizer.learning_rate = 0.02
    c.schedule.update(name="warmup_cosine", warmup_steps=10, end_factor=0.0)  # (boundaries unused)
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
    # Blocks 1-5 keep every kind of block (first, plain, widening stride-2 with residual conv)
    # and fusion1, at half the compile time of 10 (tests; not the paper's model).
    m.num_blocks = 5
  return c


def get_sweeps():
  """Named override sets for `python -m jaxaffect.tools.sweep --preset NAME` (values as on the
  command line)."""
  return {
      # BPM-GCN's ablation rows (paper Tables VI, XI, XIII, XIV): BPM-GCN* (code fusion), the
      # paper's product fusion, BPM-GCN (no fusion), without the affective constraint (head
      # removed), and each stream trained alone.
      "ablations": [
          ("baseline", {}),
          ("fusion_paper", {"model.fusion": "paper"}),
          ("no_affective", {"loss.affective_weight": "0.0", "model.affective_head": "False"}),
          ("no_fusion", {"model.fusion": "none"}),
          ("no_fusion_no_affective", {"model.fusion": "none", "loss.affective_weight": "0.0",
                                      "model.affective_head": "False"}),
          ("posture_only", {"model.streams": "posture", "model.fusion": "none"}),
          ("posture_only_no_affective", {"model.streams": "posture", "model.fusion": "none",
                                         "loss.affective_weight": "0.0",
                                         "model.affective_head": "False"}),
          ("movement_only", {"model.streams": "movement", "model.fusion": "none",
                             "loss.affective_weight": "0.0"}),
      ],
  }
