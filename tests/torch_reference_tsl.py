"""A PyTorch TSL-Net written from the paper and the released code's layout, with the released code's
module names and state_dict keys, used only by the converter parity test (torch is a test-only
extra). Widths are arguments so the test can run a narrow copy quickly."""
import math

import torch
from torch import nn


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
