"""PyTorch VAANet (maysonma/VAANet's module tree and forward) and its training step, for the
converter parity tests and the PyTorch side of `python -m jaxaffect.tools.versus`. Imports torch
(the test extra): the library never imports this module; the versus tool loads it through the
method registry (method.method_package) and the tests import it directly.

The modules are the ones the parity tests check against the converted Flax model (eval and
train mode, gradients in float64: tests/test_convert.py, tests/test_convert_train_parity.py),
so the step below runs the same function the port runs. The step is the released train loop's:
model.train() (the frozen backbone's BatchNorm uses batch statistics, its weights need no
gradient), PCCE loss (per-sample CE x (1 + lambda) where the argmax's polarity differs from the
label's; the weights built on the host as the original does), backward, the config's optimizer
(Adam 2e-4 over the parameters that require a gradient).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxaffect.convert.torch_reference import HaraResNet3D, TorchvisionResNet
from jaxaffect.errors import UserError


# ---- VAANet --------------------------------------------------------------------------------------

def _attention(cin, length, fc_bias, act):
  return nn.ModuleDict({
      "conv": nn.Sequential(nn.Conv1d(cin, 1, 1, bias=False), nn.BatchNorm1d(1), nn.Tanh()),
      "fc": nn.Linear(length, length, bias=fc_bias),
      act: nn.Softmax(dim=1) if act == "softmax" else nn.ReLU(),
  })


class VAANetRef(nn.Module):
  """VAANet's module tree and forward (visual x/255 - 100/255, frozen Hara backbone up to
  layer4, spatial/channel/temporal attention; audio ResNet-18 with a 1-channel (7,1) stem,
  AvgPool2d(8, 2), a_fc, audio temporal attention; av_fc on the concatenation).

  visual: float [B, S, 3, T, H, W] (0-255); audio: float [B, A*F, M]. m = backbone positions
  (16 for 16x112x112 snippets); nc = layer4 channels of the chosen depth.
  """

  def __init__(self, visual_depth=101, seq_len=12, audio_n_segments=16, n_classes=8, m=16,
               k=512, audio_embed_size=256):
    super().__init__()
    hara = HaraResNet3D(visual_depth, 400)
    self.resnet = nn.Sequential(*list(hara.children())[:-2])
    self.hp = dict(nc=hara.out_channels, k=k, m=m)
    self.seq_len, self.n_classes = seq_len, n_classes
    self.conv0 = nn.Sequential(nn.Conv1d(hara.out_channels, k, 1, bias=True),
                               nn.BatchNorm1d(k), nn.ReLU())
    self.sa_net = _attention(k, m, False, "softmax")
    self.ta_net = _attention(k, seq_len, True, "relu")
    self.cwa_net = _attention(m, k, False, "softmax")
    self.fc = nn.Linear(k, n_classes)
    self.audio_n_segments, self.audio_embed_size = audio_n_segments, audio_embed_size
    tv = TorchvisionResNet(18)
    a_conv1 = nn.Conv2d(1, 64, kernel_size=(7, 1), stride=(2, 1), padding=(3, 0), bias=False)
    self.a_resnet = nn.Sequential(a_conv1, *list(tv.children())[1:-2], nn.AvgPool2d([8, 2]))
    self.a_fc = nn.Sequential(nn.Linear(512, audio_embed_size), nn.BatchNorm1d(audio_embed_size),
                              nn.Tanh())
    self.aa_net = _attention(audio_embed_size, audio_n_segments, True, "relu")
    self.av_fc = nn.Linear(audio_embed_size + k, n_classes)

  def forward(self, visual, audio):
    k, m = self.hp["k"], self.hp["m"]
    visual = visual.transpose(0, 1).contiguous() / 255.0 - 100.0 / 255.0
    seq_len, batch = visual.shape[:2]
    feat = self.resnet(visual.reshape(seq_len * batch, *visual.shape[2:]))
    feat = torch.flatten(torch.squeeze(feat, dim=2), start_dim=2)       # [N, nc, m]
    f = self.conv0(feat)                                                # [N, k, m]
    a_s = self.sa_net["softmax"](self.sa_net["fc"](self.sa_net["conv"](f).squeeze(1))) * m
    f_s = f * a_s.unsqueeze(1)
    h_c = self.cwa_net["conv"](f_s.transpose(1, 2).contiguous()).squeeze(1)
    a_c = self.cwa_net["softmax"](self.cwa_net["fc"](h_c)) * k
    f_sc = torch.mean(f_s * a_c.unsqueeze(2), dim=2)
    f_sc = f_sc.view(seq_len, batch, k).permute(1, 2, 0).contiguous()  # [B, k, S]
    a_t = self.ta_net["relu"](self.ta_net["fc"](self.ta_net["conv"](f_sc).squeeze(1)))
    f_sct = torch.mean(f_sc * a_t.unsqueeze(1), dim=2)

    bs = audio.shape[0]
    a = torch.stack(audio.transpose(0, 1).chunk(self.audio_n_segments, dim=0), 0)
    a = torch.flatten(a.transpose(1, 2), 0, 1).unsqueeze(1)            # [A*B, 1, F, M]
    a = self.a_fc(torch.flatten(self.a_resnet(a), 1))
    a = a.view(self.audio_n_segments, bs, self.audio_embed_size).permute(1, 2, 0)
    a_a = self.aa_net["relu"](self.aa_net["fc"](self.aa_net["conv"](a).squeeze(1)))
    f_a = torch.mean(a * a_a.unsqueeze(1), dim=2)
    logits = self.av_fc(torch.cat([f_sct, f_a], dim=1))
    return dict(logits=logits, alpha=a_s.view(seq_len, batch, m).transpose(0, 1),
                beta=a_c.view(seq_len, batch, k).transpose(0, 1), gamma=a_t,
                audio_gamma=a_a, features=feat)


# ---- python -m jaxaffect.tools.versus -----------------------------------------------------------

# Config values the reference implements; anything else has no PyTorch twin here.
_SUPPORTED = {"visual_width": 64, "audio_width": 64, "conv1_t_size": 7, "visual_input": "frames",
              "normalization": "vaanet_legacy", "backbone_bn": "batch_stats",
              "temporal_activation": "relu", "use_spatial_attention": True,
              "use_channel_attention": True, "use_temporal_attention": True, "use_audio": True,
              "use_audio_attention": True}


def versus_batch(config, example: dict, rng: np.random.Generator) -> dict:
  """A batch in the port's layout (both sides train on it): frames, MFCC-scale audio, labels."""
  out = dict(example)
  out["video"] = rng.integers(0, 256, example["video"].shape, dtype=np.uint8)
  out["audio"] = (rng.standard_normal(example["audio"].shape) * 10).astype(np.float32)
  n = int(config.dataset.num_classes)
  out["label"] = rng.integers(0, n, example["label"].shape).astype(np.int32)
  pol = np.asarray(config.dataset.polarity, np.int32)
  out["polarity"] = pol[out["label"]]
  return out


def versus_reference(config, method, batch: dict, ctx) -> dict:
  m, ds = config.model, config.dataset
  for key, want in _SUPPORTED.items():
    if m.get(key, want) != want:
      raise UserError(f"versus: model.{key}={m.get(key)!r} has no PyTorch reference "
                      f"(it implements {key}={want!r})")
  if str(config.loss.get("name", "pcce")) not in ("pcce", "ce"):
    raise UserError(f"versus: loss.name={config.loss.name!r} has no PyTorch reference")
  b, s = batch["video"].shape[:2]
  a, f, mel = batch["audio"].shape[1:]
  tp, hp, wp, _ = method.backbone_feature_shape()
  ref = VAANetRef(visual_depth=int(m.visual_depth), seq_len=s, audio_n_segments=a,
                  n_classes=int(ds.num_classes), m=tp * hp * wp, k=int(m.visual_dim),
                  audio_embed_size=int(m.audio_dim))
  if (f // 32, mel // 32) != (8, 2):  # the port pools globally when AvgPool2d((8, 2)) won't fit
    ref.a_resnet[-1] = nn.AdaptiveAvgPool2d(1)
  with torch.no_grad():  # the original's init of the temporal-attention fc bias
    ref.ta_net["fc"].bias.fill_(1.0)
  for p in ref.resnet.parameters():  # frozen backbone, as the original
    p.requires_grad_(False)
  ref = ref.to(ctx.device).train()
  forward = ctx.compile(ref)
  # The original's loader yields float frames [B, S, 3, T, H, W] and audio [B, A*F, M].
  video = ctx.tensor(batch["video"]).permute(0, 1, 5, 2, 3, 4).float().contiguous()
  audio = ctx.tensor(batch["audio"]).reshape(b, a * f, mel)
  labels = ctx.tensor(batch["label"]).long()
  labels_np = batch["label"]
  polarity = np.asarray(ds.polarity)
  lam = float(config.loss.pcce_lambda) if config.loss.get("name", "pcce") == "pcce" else 0.0
  opt = ctx.optimizer(ref.named_parameters())

  def train():
    ref.train()
    opt.zero_grad(set_to_none=True)
    with ctx.autocast():
      logits = forward(video, audio)["logits"].float()
      ce = F.cross_entropy(logits, labels, reduction="none")
    pred = logits.detach().argmax(1).cpu().numpy()  # the original: weights via NumPy each step
    w = 1.0 + lam * (polarity[pred] != polarity[labels_np]).astype(np.float32)
    loss = (ce * torch.as_tensor(w, device=ce.device)).mean()
    loss.backward()
    ctx.update(opt, ref.parameters())
    return loss

  def evaluate():
    ref.eval()
    with torch.inference_mode(), ctx.autocast():
      return forward(video, audio)["logits"]

  recipe = (f"VAANetRef (depth {m.visual_depth}, frozen backbone with batch-statistics BN), "
            f"PCCE lambda {lam}, {ctx.describe_optimizer(opt)}")
  return {"train": train, "eval": evaluate, "recipe": recipe, "module": ref}
