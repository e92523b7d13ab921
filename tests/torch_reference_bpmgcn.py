"""PyTorch re-implementation of BPM-GCN (exped1230/BPM-GCN) in the released state_dict layout,
for converter parity tests only (the library never imports torch).

Written from the architecture description (the paper, the released code's layout); module
attribute names reproduce the original keys: data_bn_{p,m}, l{1..10}_{p,m}.gcn1.{PA,
conv_a.k, conv_b.k, conv_d.k, down.0, down.1, bn}, .tcn1.{conv, bn}, .residual.{conv, bn},
fusion{1,2,3}.att_{T,N}_{p,m}.fc{1,2}, fc1_classifier_{p,m}, fc2_aff. Inputs are the original N x C x T x V x M tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

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
