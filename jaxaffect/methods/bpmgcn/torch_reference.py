"""PyTorch BPM-GCN (exped1230/BPM-GCN) in the released state_dict layout and its training step, for
the converter parity tests and the PyTorch side of `python -m jaxaffect.tools.versus`. Imports
torch (the test extra): the library never imports this module; the versus tool loads it through
the method registry (method.method_package) and the tests import it directly.

Written from the architecture description (the paper, the released code's layout); module
attribute names reproduce the original keys: data_bn_{p,m}, l{1..10}_{p,m}.gcn1.{PA,
conv_a.k, conv_b.k, conv_d.k, down.0, down.1, bn}, .tcn1.{conv, bn}, .residual.{conv, bn},
fusion{1,2,3}.att_{T,N}_{p,m}.fc{1,2}, fc1_classifier_{p,m}, fc2_aff. Inputs are the original
N x C x T x V x M tensors.

The modules are the ones tests/test_bpmgcn_model.py checks against the converted Flax model
(eval and train mode, outputs, BN statistics and gradients), so the step below runs the function
the port runs. The step is the released main loop's: forward on the precomputed posture,
movement and affective-target arrays (the original loads them from .npy files; here they are
computed once from the skeleton by the port's own feature code, outside the timed step),
loss CE(posture) + MSE(affective) + CE(movement), backward, SGD Nesterov 0.9 with weight decay
1e-3 on every parameter (the config's optimizer).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxaffect.errors import UserError
from jaxaffect.methods.bpmgcn import gait_features

INWARD = ((9, 8), (8, 7), (7, 2), (3, 2), (4, 2), (5, 4), (6, 5), (2, 1), (1, 0), (13, 0),
          (10, 0), (15, 14), (14, 13), (12, 11), (11, 10))


def graph_a(v: int = 16) -> np.ndarray:
  def norm_cols(pairs):
    m = np.zeros((v, v))
    for src, dst in pairs:
      m[dst, src] = 1
    s = m.sum(axis=0)
    return m @ np.diag([1 / x if x > 0 else 0 for x in s])
  return np.stack([np.eye(v), norm_cols(INWARD),
                   norm_cols([(b, a) for a, b in INWARD])]).astype(np.float32)


class Tcn(nn.Module):
  def __init__(self, cin, cout, k=9, stride=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, (k, 1), (stride, 1), ((k - 1) // 2, 0))
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return self.bn(self.conv(x))


class Gcn(nn.Module):
  def __init__(self, cin, cout, a):
    super().__init__()
    self.inter = cout // 4
    self.register_buffer("A", torch.from_numpy(a), persistent=False)
    self.PA = nn.Parameter(torch.full(a.shape, 1e-6))
    self.conv_a = nn.ModuleList(nn.Conv2d(cin, self.inter, 1) for _ in range(3))
    self.conv_b = nn.ModuleList(nn.Conv2d(cin, self.inter, 1) for _ in range(3))
    self.conv_d = nn.ModuleList(nn.Conv2d(cin, cout, 1) for _ in range(3))
    self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)) if cin != cout
                 else None)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    n, c, t, v = x.shape
    adj = self.A + self.PA
    out = 0
    for k in range(3):
      q = self.conv_a[k](x).permute(0, 3, 1, 2).reshape(n, v, -1)   # N V (c'T)
      r = self.conv_b[k](x).reshape(n, -1, v)                       # N (c'T) V
      c_k = torch.softmax(q @ r / q.shape[-1], dim=-2) + adj[k]
      out = out + self.conv_d[k]((x.reshape(n, c * t, v) @ c_k).reshape(n, c, t, v))
    out = self.bn(out) + (x if self.down is None else self.down(x))
    return torch.relu(out)


class Block(nn.Module):
  def __init__(self, cin, cout, a, stride=1, residual=True):
    super().__init__()
    self.gcn1 = Gcn(cin, cout, a)
    self.tcn1 = Tcn(cout, cout, stride=stride)
    self.mode = "none" if not residual else (
        "id" if cin == cout and stride == 1 else "conv")
    if self.mode == "conv":
      self.residual = Tcn(cin, cout, k=1, stride=stride)

  def forward(self, x):
    y = self.tcn1(self.gcn1(x))
    if self.mode == "id":
      y = y + x
    elif self.mode == "conv":
      y = y + self.residual(x)
    return torch.relu(y)


class Att(nn.Module):
  """Sigmoid MLP over dim 1 after averaging dims 2, 3 (input already permuted)."""

  def __init__(self, n):
    super().__init__()
    self.fc1 = nn.Conv2d(n, n, 1, bias=False)
    self.fc2 = nn.Conv2d(n, n, 1, bias=False)

  def forward(self, x):
    s = x.mean(dim=(2, 3), keepdim=True)
    return torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Fusion(nn.Module):
  def __init__(self, t, v=16, mode="code"):
    super().__init__()
    self.mode = mode
    self.att_T_p, self.att_N_p = Att(t), Att(v)
    self.att_T_m, self.att_N_m = Att(t), Att(v)

  @staticmethod
  def _node(att, x):  # [N, C, T, V] -> [N, 1, 1, V]
    return att(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)

  @staticmethod
  def _time(att, x):  # -> [N, 1, T, 1]
    return att(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)

  def forward(self, xp, xm):
    if self.mode == "code":
      tp = self._time(self.att_T_p, xp * self._node(self.att_N_p, xp))
      tm = self._time(self.att_T_m, xm * self._node(self.att_N_m, xm))
      xp = xp + xm * tm
      return xp, xm + xp * tp
    gp = self._time(self.att_T_p, xp) * self._node(self.att_N_p, xp)
    gm = self._time(self.att_T_m, xm) * self._node(self.att_N_m, xm)
    return xp + xm * gm, xm + xp * gp


class BPMGCNRef(nn.Module):
  CH = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
  ST = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)

  def __init__(self, num_class=4, t=48, v=16, num_aff=31, fusion="code", cp=3, cm=8):
    super().__init__()
    a = graph_a(v)
    self.fusion = fusion
    self.data_bn_p = nn.BatchNorm1d(cp * v)
    self.data_bn_m = nn.BatchNorm1d(cm * v)
    for s, cin0 in (("p", cp), ("m", cm)):
      cin = cin0
      for i, (c, st) in enumerate(zip(self.CH, self.ST)):
        setattr(self, f"l{i + 1}_{s}", Block(cin, c, a, st, residual=i > 0))
        cin = c
    if fusion != "none":
      t2 = (t + 1) // 2
      for i, tt in enumerate((t, t2, (t2 + 1) // 2)):
        setattr(self, f"fusion{i + 1}", Fusion(tt, v, fusion))
    self.fc1_classifier_p = nn.Linear(256, num_class)
    self.fc1_classifier_m = nn.Linear(256, num_class)
    self.fc2_aff = nn.Linear(256, num_aff * t)

  @staticmethod
  def _bn_in(bn, x):  # [N, C, T, V, 1] -> BN1d over (V, C) features -> [N, C, T, V]
    n, c, t, v, _ = x.shape
    y = bn(x[..., 0].permute(0, 3, 1, 2).reshape(n, v * c, t))
    return y.reshape(n, v, c, t).permute(0, 2, 3, 1)

  def forward(self, x_p, x_m):
    xp, xm = self._bn_in(self.data_bn_p, x_p), self._bn_in(self.data_bn_m, x_m)
    for i in range(1, 11):
      xp, xm = getattr(self, f"l{i}_p")(xp), getattr(self, f"l{i}_m")(xm)
      if self.fusion != "none" and i in (4, 7, 10):
        xp, xm = getattr(self, f"fusion{(4, 7, 10).index(i) + 1}")(xp, xm)
    fp, fm = xp.mean(dim=(2, 3)), xm.mean(dim=(2, 3))
    return self.fc1_classifier_p(fp), self.fc2_aff(fp), self.fc1_classifier_m(fm)


# ---- python -m jaxaffect.tools.versus -----------------------------------------------------------

def versus_batch(config, example: dict, rng: np.random.Generator) -> dict:
  """A batch in the port's layout (both sides train on it): full-length random walkers."""
  out = dict(example)
  sk = example["skeleton"]
  drift = np.linspace(0.0, 1.0, sk.shape[1], dtype=np.float32)[None, :, None, None]
  out["skeleton"] = (rng.standard_normal(sk.shape) * 0.3 + drift).astype(np.float32)
  out["mask"] = np.ones_like(example["mask"])
  n = int(config.dataset.num_classes)
  out["label"] = rng.integers(0, n, example["label"].shape).astype(np.int32)
  return out


def versus_reference(config, method, batch: dict, ctx) -> dict:
  del method
  m = config.model
  for key, want in (("streams", "both"), ("pooling", "mean"), ("affective_head", True)):
    if m.get(key, want) != want:
      raise UserError(f"versus: model.{key}={m.get(key)!r} has no PyTorch reference "
                      f"(it implements {key}={want!r})")
  sk, mask = batch["skeleton"], batch["mask"] > 0
  n, t = sk.shape[:2]
  ref = BPMGCNRef(num_class=int(config.dataset.num_classes), t=t, fusion=str(m.fusion))
  ref = ref.to(ctx.device).train()
  forward = ctx.compile(ref)
  # The original's arrays (train_joint / train_movement / train_affective .npy), once.
  motion = gait_features.motion_channels(sk, mask if m.get("mask_padding", True) else None)
  target = gait_features.affective_features(sk, mask).reshape(n, -1)
  x_p = ctx.tensor(sk).permute(0, 3, 1, 2)[..., None].contiguous()       # N C T V M
  x_m = ctx.tensor(np.asarray(motion)).permute(0, 3, 1, 2)[..., None].contiguous()
  aff = ctx.tensor(np.asarray(target))
  labels = ctx.tensor(batch["label"]).long()
  w = float(config.loss.affective_weight)
  opt = ctx.optimizer(ref.named_parameters())

  def train():
    ref.train()
    opt.zero_grad(set_to_none=True)
    with ctx.autocast():
      lp, pred_aff, lm = forward(x_p, x_m)
      loss = F.cross_entropy(lp.float(), labels) + F.cross_entropy(lm.float(), labels)
      if w > 0:
        loss = loss + w * F.mse_loss(pred_aff.float(), aff)
    loss.backward()
    ctx.update(opt, ref.parameters())
    return loss

  def evaluate():
    ref.eval()
    with torch.inference_mode(), ctx.autocast():
      lp, _, lm = forward(x_p, x_m)
      return (lp + lm) / 2

  recipe = (f"BPMGCNRef (fusion {m.fusion}), CE + {w} x MSE + CE, "
            f"{ctx.describe_optimizer(opt)}")
  return {"train": train, "eval": evaluate, "recipe": recipe, "module": ref}
