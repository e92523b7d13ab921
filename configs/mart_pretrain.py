"""Label-free MART pretraining on an unlabelled video corpus (stage 1 only; fine-tune afterwards
with configs/mart_ve8.py and --config.init_from=<this workdir>).

  python -m jaxaffect.main --config configs/mart_pretrain.py:vit_b --workdir runs/mart_pt \\
      --config.pretrain.corpus_dir=/data/corpus \\
      --config.dataset.extraction.subtitles_vocab=/data/bert-base-uncased/vocab.txt
  ...:vit_b   MART's released widths (ViT-B/16 video, AST-B audio, BERT-base): 330M params
  ...:vit_l   ViT-L widths for the video and audio encoders (1024 wide, 24 blocks, 16 heads,
              the last 4 fused) with BERT-base text: a scaled model, not a released one
  ...:pod     :vit_b on 256 accelerator chips (below)

The objective is stage 1's without the label terms: 0.05 L_rec + L_comp (the corpus has no
labels; `pretrain.data="unlabelled"`), AttMask-Hint masking as released. The corpus is any
folder of videos with optional .srt subtitles (README, "Data": the video_corpus builder); no
evaluation runs (`no_eval`).

Batch and learning rate. The release updates Adam (lr 1e-4, coupled L2 1e-3) every 36 videos.
Here a global batch of 256 videos per update (one optimizer step, no accumulation: every chip
holds whole videos) with the learning rate scaled by the square root of the batch ratio,
1e-4 * sqrt(256 / 36) = 2.7e-4, a 1,000-step linear warm-up and a cosine decay; AdamW
(decoupled decay 0.05, as MAE-style pretraining) instead of the release's coupled L2, which
at this batch would act as a much stronger regulariser. bfloat16 compute, float32 parameters
and optimizer state; `remat_policy="dots_with_no_batch_dims_saveable"` keeps the matmul
outputs and recomputes the rest of each block.

:pod (256 chips): mesh data=32 x fsdp=8: parameters and optimizer state are sharded 8 ways
(one host's chips: the all-gathers stay on the fast interconnect, one layer at a time inside
the scanned stacks) and replicated over 32 data-parallel groups; global batch 1,024 videos
(4 per chip, 48 clips of 393 tokens each), lr 1e-4 * sqrt(1024 / 36) = 5.3e-4 with 2,000
warm-up steps. Plan the memory first on one CPU:
  XLA_FLAGS=--xla_force_host_platform_device_count=256 python -m jaxaffect.main \\
      --config configs/mart_pretrain.py:pod --mode memory --workdir /tmp/plan
Launch: launch/tpu_pod.sh or launch/slurm.sbatch with the same --config (README, "Multi-host").
"""
from jaxaffect import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, vit_b=False, vit_l=False, pod=False, smoke=False)
  c = config_lib.sibling_config(__file__, "mart_ve8.py", "smoke" if a.smoke else None)
  c.batch_size = 256 if not a.smoke else 4
  c.grad_accum_steps = 1
  c.total_steps = 100_000 if not a.smoke else 2
  c.pretrain.update(steps=c.total_steps, data="unlabelled", corpus_dir="",
                    steps_per_epoch=max(1, c.total_steps // 100))
  c.loss.update(cls_weight=0.0, cls_c_weight=0.0)
  c.ema.update(decay=0.0, start_step=0)
  c.frozen_params = ("mbt/audio/.*",)
  c.no_eval = True  # and eval_batch_size (unused) only has to divide the mesh like the batch
  c.evals = {}
  c.optimizer.update(name="adamw", learning_rate=2.7e-4, weight_decay=0.05)
  c.schedule.update(name="cosine", warmup_steps=1000 if not a.smoke else 0)
  c.checkpoint.every_steps = 1000
  c.log_every_steps = 50
  m = c.model
  if not a.smoke:
    m.dtype = "bfloat16"
    m.remat_policy = "dots_with_no_batch_dims_saveable"
  if a.vit_l:
    m.hidden_size, m.num_heads, m.mlp_dim, m.num_layers = 1024, 16, 4096, 24
    m.text.update(num_layers=12, num_heads=16, mlp_dim=4096)  # BERT-base depth at width 1024
  if a.pod:
    c.mesh.update(data=32, fsdp=8, tensor=1)
    c.batch_size = 1024
    c.optimizer.learning_rate = 5.3e-4
    c.schedule.warmup_steps = 2000
  c.eval_batch_size = c.batch_size
  return c
