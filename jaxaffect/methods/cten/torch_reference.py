"""PyTorch twin of CTEN's two released models (nku-zhichengzhang/CTEN: VisualErase in
models/visual_stream_w_Erase.py, the visual-only model main.py trains; VAANetErase in
models/vaanet_erase.py, the audio-visual one added later and never wired in), for the converter
parity tests and the parameter counts (tests/test_cten_param_counts.py). Imports torch (the test
extra): the library never imports this module. It defines no `versus` hooks yet.

Written from the released modules' semantics with their attribute names, so `state_dict()` has
the checkpoint keys less the "module." that the release's nn.DataParallel wrapper adds:
resnet.{0,1,4..7}.* (Hara 3D ResNet children[:-1]: conv1, bn1, relu, maxpool, layer1-4, avgpool),
nl.0.*, ta_net.{conv.0,conv.1,fc}.*, fc.*, and for VAANetErase also a_resnet.{0,1,4..7}.*,
a_fc.{0,1}.*, nl_a.0.*, v2a_attn.*, a2v_attn.*. The release never calls its _init_module, so
every layer keeps PyTorch's default init (the temporal fc bias is not set to 1 as in VAANet).

The released quirks kept on purpose: the non-local block returns BN(out(Z)) + alpha * x with
alpha initialised to 0 (the paper's residual reversed: at init the input does not pass through);
the cross-modal attention applies ReLU after all four projections and queries with the other
modality (v2a takes q = audio, k = v = video); the visual stream is fully frozen (requires_grad
False and run under no_grad; its BatchNorm still uses batch statistics in train mode).

Inputs as released: video float [B, S, 3, T, H, W] on the 0-255 scale (the release normalises it
in place; the twin does not touch its argument), audio float [B, A * F, M] fbank (16 x 100 x 128);
audio as [B, A, F, M] (our pipeline's layout) is accepted too. Clips and audio chunks run
segment-major through the audio net as released (row a * B + b), which only its BatchNorm
statistics' summation order could notice.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from jaxaffect.convert.torch_reference import HaraResNet3D, TorchvisionResNet

NORM_VALUE = 255.0
MEAN = 100.0 / NORM_VALUE  # the released normalisation: x / 255 - 100 / 255


# ---- blocks ------------------------------------------------------------------------------------

class NonLocalBlockRef(nn.Module):
  """Segment-level non-local block over [B, S, D]: softmax(theta phi^T / sqrt(inner)) over the
  S segments, Z = softmax . g, BN1d(out(Z)) over the B * S rows, plus alpha * x (alpha a learned
  scalar, 0 at init: the released, reversed residual)."""

  def __init__(self, dim_in=2048, dim_inner=256, dim_out=None):
    super().__init__()
    dim_out = dim_in if dim_out is None else dim_out
    self.dim_in, self.dim_inner, self.dim_out = dim_in, dim_inner, dim_out
    self.theta = nn.Linear(dim_in, dim_inner)
    self.phi = nn.Linear(dim_in, dim_inner)
    self.g = nn.Linear(dim_in, dim_inner)
    self.out = nn.Linear(dim_inner, dim_out)
    self.bn = nn.BatchNorm1d(dim_out)
    self.alpha = nn.Parameter(torch.tensor([0.0]))

  def forward(self, x):
    b, s = x.shape[:2]
    theta, phi, g = self.theta(x), self.phi(x), self.g(x)              # [B, S, inner]
    # inner ** -0.5 as a product, as released (the MHA below divides by sqrt(d)).
    p = F.softmax(torch.bmm(theta, phi.transpose(1, 2)) * self.dim_inner ** -0.5, dim=-1)
    z = torch.bmm(p, g)                                                 # [B, S, inner]
    out = self.bn(self.out(z.reshape(b * s, -1))).view(b, s, -1)
    return out + self.alpha * x


class MultiHeadAttentionRef(nn.Module):
  """The release's MultiHeadAttentionOp: linear_q/k/v/o (bias), ReLU after each of the four,
  head h reading features [h * d, (h + 1) * d) (d = in_features / head_num), scaled dot product
  with sqrt(d), no mask, dropout or norm. forward(q, k, v) -> (y [B, Sq, D], attention weights
  [B, heads, Sq, Sk]; the release returns them flattened to [B * heads, Sq, Sk])."""

  def __init__(self, in_features=2048, head_num=8, bias=True):
    super().__init__()
    if in_features % head_num:
      raise ValueError(f"in_features ({in_features}) must be divisible by head_num ({head_num})")
    self.in_features, self.head_num = in_features, head_num
    self.linear_q = nn.Linear(in_features, in_features, bias)
    self.linear_k = nn.Linear(in_features, in_features, bias)
    self.linear_v = nn.Linear(in_features, in_features, bias)
    self.linear_o = nn.Linear(in_features, in_features, bias)

  def _heads(self, x):  # [B, S, D] -> [B, H, S, d]
    b, s, dim = x.shape
    return x.reshape(b, s, self.head_num, dim // self.head_num).transpose(1, 2)

  def forward(self, q, k, v):
    q = self._heads(F.relu(self.linear_q(q)))
    k = self._heads(F.relu(self.linear_k(k)))
    v = self._heads(F.relu(self.linear_v(v)))
    scores = q.matmul(k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    attn = F.softmax(scores, dim=-1)
    b, h, sq, d = q.shape
    y = attn.matmul(v).transpose(1, 2).reshape(b, sq, h * d)
    return F.relu(self.linear_o(y)), attn


# ---- shared pieces -----------------------------------------------------------------------------

def visual_backbone(depth=101, snippet_duration=16, sample_size=112):
  """The frozen Hara 3D ResNet without its fc, numbered as nn.Sequential(*children[:-1]) numbers
  it (0 conv1, 1 bn1, 4-7 layer1-4, 8 avgpool), with the release's fixed AvgPool3d
  (ceil(T / 16), ceil(H / 32), ceil(W / 32)), stride 1: (1, 4, 4) for 16 x 112 x 112. Returns
  (module, feature width)."""
  hara = HaraResNet3D(depth, n_classes=8)  # the fc is dropped; its size is irrelevant
  t, hw = math.ceil(snippet_duration / 16), math.ceil(sample_size / 32)
  hara.avgpool = nn.AvgPool3d((t, hw, hw), stride=1)  # replaces in place: order is kept
  resnet = nn.Sequential(*list(hara.children())[:-1])
  for p in resnet.parameters():  # as released: frozen (and run under no_grad)
    p.requires_grad_(False)
  return resnet, hara.out_channels


def temporal_attention(dim, seq_len):
  """ta_net: Conv1d(dim -> 1, no bias) + BN1d(1) + tanh, Linear(S, S), ReLU -> gamma [B, S]."""
  return nn.ModuleDict({
      "conv": nn.Sequential(nn.Conv1d(dim, 1, 1, bias=False), nn.BatchNorm1d(1), nn.Tanh()),
      "fc": nn.Linear(seq_len, seq_len, bias=True),
      "relu": nn.ReLU(),
  })


def chunk_audio(audio, n_segments):
  """[B, A * F, M] -> [A * B, 1, F, M], row a * B + b = frames [a F, (a + 1) F) of sample b: the
  release's transpose / chunk / stack / transpose / flatten, as one reshape."""
  b, frames, mels = audio.shape
  if frames % n_segments:
    raise ValueError(f"{frames} audio frames do not split into {n_segments} equal chunks")
  a = audio.reshape(b, n_segments, frames // n_segments, mels).transpose(0, 1)
  return a.reshape(n_segments * b, 1, frames // n_segments, mels)


def _visual_features(resnet, video):
  """Normalised video [B, S, 3, T, H, W] -> frozen backbone features [B, S, C]."""
  b, s = video.shape[:2]
  x = video / NORM_VALUE - MEAN  # the release does this in place on its argument
  with torch.no_grad():
    feat = resnet(x.reshape(b * s, *x.shape[2:]))
  return feat.reshape(b, s, -1)


def _pool_and_classify(ta_net, drop, fc, f):
  """f [B, S, C] -> (pooled [B, C], gamma [B, S], logits): mean over S of f * gamma."""
  f = f.transpose(1, 2).contiguous()                                     # [B, C, S]
  gamma = ta_net["relu"](ta_net["fc"](torch.squeeze(ta_net["conv"](f), dim=1)))
  pooled = torch.mean(f * gamma.unsqueeze(1), dim=2)
  return pooled, gamma, fc(drop(pooled))


# ---- models ------------------------------------------------------------------------------------

class VisualEraseRef(nn.Module):
  """VisualErase: frozen 3D ResNet -> [B, S, C], one non-local block (nl.0), temporal attention
  gamma, weighted mean over S, Dropout(0.2), fc. forward(video) -> (logits, gamma); with
  return_features=True a dict of the stages (v_backbone, v_nl, gamma, pooled, logits).
  C = the backbone's width (2048 for depth 101, the release's only size; smaller depths are for
  cheap tests)."""

  def __init__(self, num_classes=8, seq_len=16, depth=101, snippet_duration=16, sample_size=112):
    super().__init__()
    self.num_classes, self.seq_len = num_classes, seq_len
    self.drop = nn.Dropout(p=0.2)
    self.resnet, dim = visual_backbone(depth, snippet_duration, sample_size)
    self.nl = nn.Sequential(NonLocalBlockRef(dim))
    self.ta_net = temporal_attention(dim, seq_len)
    self.fc = nn.Linear(dim, num_classes)

  def forward(self, video, return_features=False):
    v_backbone = _visual_features(self.resnet, video)
    v_nl = self.nl(v_backbone)
    pooled, gamma, logits = _pool_and_classify(self.ta_net, self.drop, self.fc, v_nl)
    if return_features:
      return dict(v_backbone=v_backbone, v_nl=v_nl, gamma=gamma, pooled=pooled, logits=logits)
    return logits, gamma


class VAANetEraseRef(nn.Module):
  """VAANetErase: the VisualErase visual path to nl -> v [B, S, C]; audio chunks through a
  ResNet-18 with a 1-channel (7, 1) stem and AvgPool2d((4, 8)) (1 x 1 for 100 x 128 chunks),
  a_fc (Linear 512 -> E, BN1d, tanh), nl_a -> a [B, A, E]; v2 = v + v2a_attn(q=a, k=v, v=v),
  a2 = a + a2v_attn(q=v, k=a, v=a); one temporal attention over concat [B, S, C + E], weighted
  mean, Dropout(0.2), fc. The release needs E == C (2048) and A == S (16).
  forward(video, audio) -> (logits, gamma); with return_features=True a dict (v_backbone, v_nl,
  a_fc, a_nl, v2, a2, gamma, pooled, logits)."""

  def __init__(self, num_classes=8, seq_len=16, audio_segments=16, audio_embed=2048, depth=101,
               snippet_duration=16, sample_size=112, head_num=8):
    super().__init__()
    self.num_classes, self.seq_len = num_classes, seq_len
    self.audio_segments, self.audio_embed = audio_segments, audio_embed
    # Attribute order as the release's __init__ builds them, so state_dict() lists keys alike.
    tv = TorchvisionResNet(18)
    a_conv1 = nn.Conv2d(1, 64, kernel_size=(7, 1), stride=(2, 1), padding=(3, 0), bias=False)
    self.a_resnet = nn.Sequential(a_conv1, *list(tv.children())[1:-2], nn.AvgPool2d((4, 8)))
    self.a_fc = nn.Sequential(nn.Linear(tv.fc.in_features, audio_embed),
                              nn.BatchNorm1d(audio_embed), nn.Tanh())
    self.drop = nn.Dropout(p=0.2)
    self.resnet, dim = visual_backbone(depth, snippet_duration, sample_size)
    if audio_embed != dim:  # the cross-modal attention adds one modality to the other
      raise ValueError(f"audio_embed ({audio_embed}) must equal the visual width ({dim})")
    self.nl = nn.Sequential(NonLocalBlockRef(dim))
    self.nl_a = nn.Sequential(NonLocalBlockRef(audio_embed))
    self.v2a_attn = MultiHeadAttentionRef(dim, head_num)
    self.a2v_attn = MultiHeadAttentionRef(dim, head_num)
    self.ta_net = temporal_attention(dim + audio_embed, seq_len)
    self.fc = nn.Linear(dim + audio_embed, num_classes)

  def forward(self, video, audio, return_features=False):
    v_backbone = _visual_features(self.resnet, video)
    v_nl = self.nl(v_backbone)
    bs = audio.shape[0]
    if audio.dim() == 4:  # [B, A, F, M], our pipeline's layout
      audio = audio.reshape(bs, -1, audio.shape[-1])
    a = self.a_resnet(chunk_audio(audio, self.audio_segments))
    a = self.a_fc(torch.flatten(a, start_dim=1))                       # [A * B, E]
    a_fc = a.view(self.audio_segments, bs, self.audio_embed).permute(1, 0, 2).contiguous()
    a_nl = self.nl_a(a_fc)
    v2a, _ = self.v2a_attn(q=a_nl, k=v_nl, v=v_nl)
    a2v, _ = self.a2v_attn(q=v_nl, k=a_nl, v=a_nl)
    v2, a2 = v_nl + v2a, a_nl + a2v
    pooled, gamma, logits = _pool_and_classify(self.ta_net, self.drop, self.fc,
                                               torch.cat((v2, a2), dim=-1))
    if return_features:
      return dict(v_backbone=v_backbone, v_nl=v_nl, a_fc=a_fc, a_nl=a_nl, v2=v2, a2=a2,
                  gamma=gamma, pooled=pooled, logits=logits)
    return logits, gamma
