"""PyTorch TSL-Net written from the paper and the released code's layout (its module names and
state_dict keys) and its training step, for the converter parity tests and the PyTorch side of
`python -m jaxaffect.tools.versus`. Imports torch (the test extra): the library never imports
this module; the versus tool loads it through the method registry (method.method_package) and
the tests import it directly. Widths are arguments so a test can run a narrow copy quickly.

The modules are the ones tests/test_tsl_model.py and tests/test_tsl_train_parity.py check
against the converted Flax model (eval and train mode, CPC, BN statistics, gradients), so the
step below runs the function the port runs. The step is the released train.py's: one video per
forward, the loss of the research brief's section on TSL's losses (2 x KL video term + frame,
background and pseudo-action focal BCE + the CPC term with the code's sign; seeds searched on
the host by tsl_loss.select_seeds_loop, the original's loop, which tests/test_tsl_loss.py checks
against the port's vectorised search), backward of loss / videos-per-update, and Adam (L2 5e-4,
lr x10 for the audio CNN) once per optimizer.multi_steps x batch_size videos.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from jaxaffect.errors import UserError
from jaxaffect.methods.tsl import loss as tsl_loss


def step_encoding(d_model, length):
  pe = torch.zeros(length, d_model)
  pos = torch.arange(0, length).unsqueeze(1).float()
  div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * -(math.log(10000.0) / d_model))
  pe[:, 0::2] = torch.sin(pos * div)
  pe[:, 1::2] = torch.cos(pos * div)
  return pe


class Reverse(nn.Module):
  def __init__(self, x_size, y_size, layers=4):
    super().__init__()
    mods = []
    for _ in range(layers - 1):
      mods += [nn.Conv1d(y_size, y_size, 3, padding=1), nn.ReLU()]
    mods += [nn.Conv1d(y_size, x_size, 3, padding=1), nn.ReLU()]
    self.net = nn.Sequential(*mods)

  def forward(self, x, z):
    pred = self.net(z).permute(0, 2, 1).flatten(0, 1)
    x = x.flatten(0, 1)
    pred = pred / pred.norm(dim=-1, keepdim=True)
    x = x / x.norm(dim=-1, keepdim=True)
    pos = (x * pred).sum(-1)
    neg = torch.logsumexp(x @ pred.t(), dim=-1)
    return (pos - neg).mean()


class ClsModule(nn.Module):
  def __init__(self, channels=(64, 256, 512), align=512, neck=2048, num_classes=2, dropout=0.7):
    super().__init__()
    c1, c2, c3 = channels
    self.register_buffer("tpe", step_encoding(60, 4000)[None, :, None, :], persistent=False)
    self.a_extractor = nn.Sequential(
        nn.Conv2d(1, c1, 7, stride=(3, 2), padding=3), nn.ReLU(), nn.BatchNorm2d(c1),
        nn.MaxPool2d(4, 4),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 1), nn.ReLU(),
        nn.BatchNorm2d(c2), nn.MaxPool2d(2, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c3, 1), nn.ReLU(),
        nn.BatchNorm2d(c3), nn.AvgPool2d((4, 3)))
    self.v_align = nn.Sequential(nn.Conv1d(1024, align, 3, padding=1), nn.ReLU())
    self.neck = nn.Sequential(nn.Conv1d(align + c3, neck, 3, padding=1), nn.ReLU())
    self.rev_fa = Reverse(c3, neck)
    self.rev_fv = Reverse(align, neck)
    self.classifier = nn.Sequential(nn.Conv1d(neck, num_classes + 1, 1, bias=False))
    self.distribution = nn.Sequential(nn.Conv1d(neck, num_classes + 1, 1, bias=False))
    self.drop_out = nn.Dropout(dropout)
    self.c3 = c3

  def forward(self, v, a, train):
    b, t, h, w = a.shape
    chunks = []
    for s in range(0, t, 600):
      n = min(600, t - s)
      x = a[:, s:s + n] + self.tpe[:, s:s + n]
      x = torch.cat([x.roll(1, 1).reshape(b * n, 1, h, w), x.reshape(b * n, 1, h, w),
                     x.roll(-1, 1).reshape(b * n, 1, h, w)], dim=2)
      chunks.append(self.a_extractor(x).flatten(1).reshape(b, n, self.c3))
    a = torch.cat(chunks, 1)
    v = self.v_align(v.permute(0, 2, 1)).permute(0, 2, 1)
    z = self.neck(torch.cat([v, a], -1).permute(0, 2, 1))
    cpc = self.rev_fa(a, z) + self.rev_fv(v, z) if train else None
    z = self.drop_out(z)
    return (self.classifier(z).permute(0, 2, 1), self.distribution(z).permute(0, 2, 1), cpc)


class Model(nn.Module):
  def __init__(self, r_act=8, **kw):
    super().__init__()
    self.cls_module = ClsModule(**kw)
    self.r_act = r_act

  def forward(self, v, a, train=False):
    k = v.shape[1] // self.r_act
    cas, dis, cpc = self.cls_module(v, a, train)
    sig = torch.sigmoid(cas)
    fuse = torch.cat([sig[..., :-1] * (1 - sig[..., -1:]), sig[..., -1:]], -1)
    vid = sig.sort(descending=True, dim=1)[0][:, :k, :-1].mean(1)
    ldl = torch.softmax(dis[..., :-1].sort(descending=True, dim=1)[0][:, :k].mean(1), dim=1)
    return dict(cas=cas, cas_sigmoid_fuse=fuse, video_score=vid, video_distribution=ldl,
                cpc=cpc)


# ---- python -m jaxaffect.tools.versus -----------------------------------------------------------

def versus_batch(config, example: dict, rng: np.random.Generator) -> dict:
  """A batch in the port's layout (both sides train on it): full-length videos of
  dataset.example_length snippets with a point every ~80 snippets (TSL-300: 5.4 segments in a
  mean video of ~435 snippets)."""
  out = dict(example)
  b, length = example["mask"].shape
  out["rgb"] = np.abs(rng.standard_normal(example["rgb"].shape)).astype(np.float32)
  out["audio"] = rng.uniform(0.0, 1.0, example["audio"].shape).astype(np.float32)
  out["mask"] = np.ones_like(example["mask"])
  out["length"] = np.full_like(example["length"], length)
  n_cls = int(config.model.num_classes)
  labels = np.full((b, length), -1, np.int32)
  counts = np.zeros((b, n_cls), np.float32)
  for i in range(b):
    pts = rng.choice(length, size=max(2, length // 80), replace=False)
    labels[i, pts] = rng.integers(0, n_cls, len(pts))
    counts[i] = np.bincount(labels[i, pts], minlength=n_cls)
  out["point_label"], out["point_count"] = labels, counts
  return out


def _point_rows(labels: np.ndarray, num_classes: int, smooth: float) -> np.ndarray:
  """[T] (-1 = none) -> [T, C + 1]: 1 - smooth on the class, smooth elsewhere, background 0."""
  rows = np.zeros((len(labels), num_classes + 1), np.float32)
  has = labels >= 0
  rows[has, :num_classes] = smooth
  rows[has, labels[has]] = 1.0 - smooth
  return rows


def _focal_bce(p, y, hard_focal=False):
  """Elementwise focal factor x torch BCELoss(reduction='none') (logs clamped at -100)."""
  if hard_focal:
    focal = ((1 - p) * (y > 0.5) + p * (y < 0.5)) ** 2
  else:
    focal = ((1 - p) * y + p * (1 - y)) ** 2
  return focal * nn.functional.binary_cross_entropy(p, y, reduction="none")


def video_loss_terms(out: dict, y: np.ndarray, d: torch.Tensor, config, device) -> dict:
  """The terms of one video's loss (train.py's Total_loss): out from Model(train=True) on one
  video, y [T, 3] point rows, d [1, C] point counts."""
  p = out["cas_sigmoid_fuse"][0].float()
  lc = config.loss
  act, bkg = tsl_loss.select_seeds_loop(p.detach().cpu().numpy(), y,
                                        float(lc.background_threshold))
  y_t, act_t, bkg_t = (torch.from_numpy(x).to(device) for x in (y, act, bkg))
  tiny = 1e-12  # the original divides by 0 (NaN) for a video without seeds; 0 here, no sync
  dn = d / d.sum(-1, keepdim=True)
  q = out["video_distribution"].float()
  # KLDivLoss(log q, d) with its default 'mean' reduction: the mean over all B x C elements.
  video = (torch.xlogy(dn, dn) - dn * torch.log(q)).mean()
  w = y_t.max(-1, keepdim=True)[0]
  frame = (_focal_bce(p, y_t) * w).sum() / w.sum().clamp_min(tiny)
  bk_y = torch.zeros_like(p)
  bk_y[:, -1] = 1.0
  background = (_focal_bce(p, bk_y) * bkg_t[:, None]).sum() / bkg_t.sum().clamp_min(tiny)
  pseudo = 0.5 * (_focal_bce(p, act_t, hard_focal=True) * act_t).sum() / act_t.max(
      -1)[0].sum().clamp_min(tiny)
  return {"video": video, "frame": frame, "background": background, "pseudo_action": pseudo,
          "cpc": out["cpc"] if out["cpc"] is not None else torch.zeros((), device=device)}


def versus_reference(config, method, batch: dict, ctx) -> dict:
  del method
  m, lc = config.model, config.loss
  for key, want in (("modalities", "both"), ("cpc_layers", 4)):
    if m.get(key, want) != want:
      raise UserError(f"versus: model.{key}={m.get(key)!r} has no PyTorch reference "
                      f"(it implements {key}={want!r})")
  lam = [float(x) for x in lc.lambdas]
  on = {k: bool(lc.get(k, True)) for k in ("video", "frame", "background", "pseudo_action")}
  on["cpc"] = bool(lc.get("cpc", True)) and lam[3] != 0.0 and bool(m.get("reverse_mapping", True))
  n_cls = int(m.num_classes)
  ref = Model(r_act=int(m.r_act), channels=tuple(m.audio_channels), align=int(m.align_features),
              neck=int(m.neck_features), num_classes=n_cls, dropout=float(m.dropout))
  ref = ref.to(ctx.device).train()
  forward = ctx.compile(ref)
  b = batch["rgb"].shape[0]
  rgb, audio = ctx.tensor(batch["rgb"]), ctx.tensor(batch["audio"])
  counts = ctx.tensor(batch["point_count"])
  rows = [_point_rows(batch["point_label"][i], n_cls, float(lc.label_smoothing))
          for i in range(b)]
  per_update = int(config.optimizer.get("multi_steps", 1) or 1) * b  # videos per update
  opt = ctx.optimizer(ref.named_parameters())
  seen = [0]

  def train():
    ref.train()
    for i in range(b):  # one video per forward, as the original
      with ctx.autocast():
        out = forward(rgb[i:i + 1], audio[i:i + 1], train=on["cpc"])
      # The loss in float32, as ours (and CUDA autocast refuses binary_cross_entropy).
      t = video_loss_terms(out, rows[i], counts[i:i + 1], config, ctx.device)
      t = {k: v if on[k] else torch.zeros_like(v) for k, v in t.items()}
      loss = (lam[0] * t["video"]
              + lam[1] * ((1 - lam[2]) * t["frame"] + lam[2] * (t["background"]
                                                              + t["pseudo_action"]))
              + lam[3] * float(lc.cpc_sign) * t["cpc"])
      (loss / per_update).backward()
      seen[0] += 1
      if seen[0] % per_update == 0:
        ctx.update(opt, ref.parameters())
        opt.zero_grad(set_to_none=True)
    return loss

  def evaluate():
    ref.eval()
    with torch.inference_mode(), ctx.autocast():
      return [forward(rgb[i:i + 1], audio[i:i + 1])["cas_sigmoid_fuse"] for i in range(b)]

  recipe = (f"TSL Model (one video per forward, {b} per step), loss lambdas {lam} "
            f"cpc_sign {float(lc.cpc_sign)}, host seed search, update every {per_update} "
            f"videos, {ctx.describe_optimizer(opt)}")
  return {"train": train, "eval": evaluate, "recipe": recipe, "module": ref}
