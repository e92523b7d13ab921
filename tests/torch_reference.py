"""PyTorch re-implementations of the original architectures, for converter parity tests only.

Written from the published architecture descriptions so the module names produce the original
state_dict key layouts: Hara et al.'s 3D ResNets (kenshohara/3D-ResNets-PyTorch, both
generations share the names), a torchvision-layout 2D ResNet, and VAANet (maysonma/VAANet) with
its Sequential/ModuleDict structure (resnet.{0,1,4..7}, conv0, sa_net, cwa_net, ta_net, fc,
a_resnet, a_fc, aa_net, av_fc). Test-only: the library never imports torch.
"""
from __future__ import annotations

import torch
from torch import nn

LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
          101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


# ---- Hara 3D ResNet ----------------------------------------------------------------------------

class Basic3d(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv3d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm3d(planes)
    self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm3d(planes)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottle3d(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm3d(planes)
    self.conv2 = nn.Conv3d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm3d(planes)
    self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm3d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _stages(owner, block, layers, cin, conv, bn):
  for s, n in enumerate(layers):
    planes = 64 * 2 ** s
    stride = 1 if s == 0 else 2
    down = None
    if stride != 1 or cin != planes * block.expansion:
      down = nn.Sequential(conv(cin, planes * block.expansion, 1, stride, bias=False),
                           bn(planes * block.expansion))
    blocks = [block(cin, planes, stride, down)]
    cin = planes * block.expansion
    blocks += [block(cin, planes) for _ in range(1, n)]
    setattr(owner, f"layer{s + 1}", nn.Sequential(*blocks))
  return cin


class HaraResNet3D(nn.Module):
  """conv1 (t,7,7)/(t_stride,2,2), bn1, relu, maxpool 3/2/1, layer1-4 (shortcut B), avgpool, fc."""

  def __init__(self, depth=101, n_classes=400, conv1_t_size=7, conv1_t_stride=1):
    super().__init__()
    block = Bottle3d if depth >= 50 else Basic3d
    self.conv1 = nn.Conv3d(3, 64, (conv1_t_size, 7, 7), (conv1_t_stride, 2, 2),
                           (conv1_t_size // 2, 3, 3), bias=False)
    self.bn1 = nn.BatchNorm3d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool3d(3, 2, 1)
    self.out_channels = _stages(self, block, LAYERS[depth], 64, nn.Conv3d, nn.BatchNorm3d)
    self.avgpool = nn.AdaptiveAvgPool3d(1)
    self.fc = nn.Linear(self.out_channels, n_classes)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- torchvision-layout 2D ResNet --------------------------------------------------------------

class Basic2d(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
  """ResNet-18/34 with torchvision's names: conv1 3->64 7x7/2, bn1, relu, maxpool, layer1-4,
  avgpool, fc (1000 ImageNet classes)."""

  def __init__(self, depth=18, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cout = _stages(self, Basic2d, LAYERS[depth], 64, nn.Conv2d, nn.BatchNorm2d)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cout, num_classes)


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


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random BatchNorm affine params and running stats (everything else keeps its init), so a
  converter that swaps mean/var or scale/bias, or drops the stats, fails parity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in module.modules():
      if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        n = mod.num_features
        mod.weight.copy_(0.5 + torch.rand(n, generator=g))
        mod.bias.copy_(0.1 * torch.randn(n, generator=g))
        mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
        mod.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
  return module.eval()
