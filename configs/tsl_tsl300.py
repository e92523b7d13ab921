"""TSL-Net on TSL-300 with the released code's recipe (ACM MM 2022).

  python -m jaxaffect.main --config configs/tsl_tsl300.py --workdir ... \
      --config.dataset.manual_dir=/path/to/VideoSenti     # the release: features/, gt.json, ...
  ...:synthetic   generated untrimmed videos in the same layout (small model, see below)
  ...:smoke       a tiny variant that trains in seconds (tests)

Released code (defaults here): Adam (betas 0.9/0.999, L2 weight decay 5e-4 added to the
gradient as torch.optim.Adam does), lr 1e-5 and 1e-4 (10x) for the audio CNN, one video per
forward and 16 videos per update (batch_size 1, optimizer.multi_steps 16), 2000 updates =
32,000 train steps; evaluation every 100 updates. Loss weights lambdas [2, 1, 0.5, 1];
loss.cpc_sign +1 reproduces the code (the CPC log-likelihood is added, pushing predictions away
from their own modality), -1 the paper's and MMIM's sign.

Differences from the code: the original selects the checkpoint with the best test mAP over its
20 evaluations; here the final checkpoint is evaluated (every evaluation is in metrics.jsonl).
Its data order re-creates the loader every 12 updates (192 of 200 shuffled videos per pass);
here a seeded shuffle repeats over all training videos. Videos are padded to bucket lengths
(dataset.buckets): one compilation per bucket, none per video.

Ablations (the paper's rows), any of them from the command line; all of them with
`python -m jaxaffect.tools.sweep --config ... --preset ablations` (get_sweeps below):
  --config.loss.video=False | frame | background | pseudo_action | cpc   (switch a term off)
  --config.model.modalities=visual | audio                               (one stream only)
  --config.loss.cpc_sign=-1                                               (paper sign)
"""
from jaxaffect import config_lib

UPDATES = 2000
VIDEOS_PER_UPDATE = 16


def get_config(arg=None):
  a = config_lib.parse_arg(arg, smoke=False, synthetic=False)
  c = config_lib.base_config()
  c.method = "tsl"
  c.seed = 123  # run_train.sh
  c.batch_size = 1
  c.eval_batch_size = 1
  c.optimizer.update(name="adam", learning_rate=1e-5, weight_decay=5e-4,
                     multi_steps=VIDEOS_PER_UPDATE)
  c.optimizer.lr_multipliers = [("cls_module/a_extractor/.*", 10.0)]
  c.total_steps = UPDATES * VIDEOS_PER_UPDATE
  c.eval_every_steps = 100 * VIDEOS_PER_UPDATE
  # Post-processing (config.postprocess) + ActivityNet detection mAP on the test videos.
  c.evals = dict(eval=dict(type="tsl_localization"))
  c.checkpoint.every_steps = 100 * VIDEOS_PER_UPDATE
  c.log_every_steps = VIDEOS_PER_UPDATE

  d = c.dataset
  d.name = "synthetic_tsl" if a.synthetic else "tsl300"
  d.manual_dir = ""
  d.auto_prepare = bool(a.synthetic)
  d.num_classes = 2
  d.class_names = ("n", "p")
  # Snippet lengths videos are padded to; a video longer than the last one is an error.
  d.buckets = [64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4000]
  # Batch length of --mode benchmark: the bucket of a mean TSL-300 video (258 s, ~435 snippets).
  d.example_length = 512
  # > 0: batches of similar lengths, drawn from windows of that many batches (less padding
  # when batch_size > 1; no effect at batch 1). 0: a plain seeded shuffle.
  d.group_by_length = 0
  d.annotator = "random"   # one of the three point annotators per video, seeded (the original)
  d.synthetic = dict(seed=0, num_train=160, num_test=40, min_snippets=48, max_snippets=256)

  m = c.model
  m.num_classes = 2
  m.audio_channels = (64, 256, 512)
  m.align_features = 512
  m.neck_features = 2048
  m.cpc_layers = 4
  m.dropout = 0.7
  m.modalities = "both"        # "both" | "visual" | "audio"
  m.reverse_mapping = True
  m.r_act = 8
  m.dtype = "float32"         # compute dtype ("bfloat16"); params and scores stay float32

  c.loss = dict(lambdas=[2.0, 1.0, 0.5, 1.0], cpc_sign=1.0, label_smoothing=0.1,
                background_threshold=0.95, video=True, frame=True, background=True,
                pseudo_action=True, cpc=True)
  c.postprocess = dict(scale=24, class_threshold=0.5, margin=0.03, video_score_weight=0.3,
                       nms_threshold=0.5)

  if a.synthetic:
    # No pretrained features exist for synthetic videos and 2 CPU cores cannot train the
    # 91M-parameter model: a narrow TSL-Net (same structure) with a larger lr and batches.
    m.audio_channels = (16, 32, 64)
    m.align_features = 64
    m.neck_features = 128
    c.batch_size = 8
    c.eval_batch_size = 8
    d.example_length = 192
    c.optimizer.multi_steps = 1
    c.optimizer.learning_rate = 1e-3
    c.total_steps = 300
    c.eval_every_steps = 100
    c.checkpoint.every_steps = 100
    c.log_every_steps = 10
  if a.smoke:
    d.name = "synthetic_tsl"
    d.auto_prepare = True
    d.synthetic.update(num_train=12, num_test=4, min_snippets=24, max_snippets=100)
    d.example_length = 64
    m.audio_channels = (8, 16, 16)
    m.align_features = 16
    m.neck_features = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optimizer.multi_steps = 2
    c.optimizer.learning_rate = 1e-3
    c.total_steps = 4
    c.eval_every_steps = 0
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
  return c


def get_sweeps():
  """Named override sets for `python -m jaxaffect.tools.sweep --preset NAME` (values as on the
  command line)."""
  return {
      # TSL-Net's ablation rows (paper Tables 2, 4, 6): video-level loss only, + frame-by-frame
      # (points, no pseudo labels), no pseudo labels, no CPC alignment, each stream alone, and
      # the paper's CPC sign.
      "ablations": [
          ("baseline", {}),
          ("video_only", {"loss.frame": "False", "loss.background": "False",
                          "loss.pseudo_action": "False", "loss.cpc": "False"}),
          ("video_frame", {"loss.background": "False", "loss.pseudo_action": "False",
                           "loss.cpc": "False"}),
          ("no_pseudo_labels", {"loss.background": "False", "loss.pseudo_action": "False"}),
          ("no_cpc", {"loss.cpc": "False"}),
          ("visual_only", {"model.modalities": "visual"}),
          ("audio_only", {"model.modalities": "audio"}),
          ("cpc_paper_sign", {"loss.cpc_sign": "-1.0"}),
      ],
  }
