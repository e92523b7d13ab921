"""PyTorch twins of the shared backbones, for converter parity tests and the PyTorch side of
`python -m jaxaffect.tools.versus` (torch is the test extra; nothing imports this module at
`import jaxaffect` time).

Written from the published architecture descriptions so the module names produce the original
state_dict key layouts: Hara et al.'s 3D ResNets (kenshohara/3D-ResNets-PyTorch, both
generations share the names) and a torchvision-layout 2D ResNet. A paper's own modules live in
its package (jaxaffect/methods/<paper>/torch_reference.py).
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
