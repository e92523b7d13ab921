"""CTEN's PyTorch twin (methods/cten/torch_reference.py) against the released models' sizes and
key layout: exact parameter counts of VisualErase and VAANetErase at the release's sizes (built
on the meta device: no memory, no init cost), then cheap CPU forwards with a ResNet-10 backbone
at 32 px that check the shapes, the reversed non-local residual, the audio chunking and the head
split of the cross-modal attention.

The counts (brief vaanet_cten_tsl.md 4.2.1, 4.2.2): the 3D ResNet-101 body is 85,245,120 and
frozen; trainable is everything outside resnet.*.
"""
import pytest

torch = pytest.importorskip("torch")
from jaxaffect.methods.cten import torch_reference as tr  # noqa: E402  (needs torch)


def _count(module, prefixes=()):
  """Parameter elements whose name starts with one of `prefixes` (all when empty)."""
  return sum(p.numel() for k, p in module.named_parameters()
             if not prefixes or k.startswith(tuple(prefixes)))


@pytest.fixture(scope="module")
def released():
  with torch.device("meta"):
    return tr.VisualEraseRef(), tr.VAANetEraseRef()


def _check_totals(model, total, trainable):
  n_all = _count(model)
  n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
  n_outside = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("resnet."))
  print(f"\n{type(model).__name__}: total {n_all:,}, trainable {n_train:,}")
  assert (n_all, n_train) == (total, trainable)
  assert n_outside == trainable  # frozen = exactly the visual backbone


def test_visual_erase_counts(released):
  model, _ = released
  _check_totals(model, 87_367_899, 2_122_779)
  assert _count(model, ("resnet.",)) == 85_245_120
  assert _count(model, ("nl.",)) == 2_104_065
  assert _count(model, ("ta_net.",)) == 2_322
  assert _count(model, ("fc.",)) == 16_392


def test_vaanet_erase_counts(released):
  _, model = released
  _check_totals(model, 135_283_484, 50_038_364)
  assert _count(model, ("resnet.",)) == 85_245_120
  assert _count(model, ("v2a_attn.",)) == _count(model, ("a2v_attn.",)) == 16_785_408
  assert _count(model, ("a_resnet.", "a_fc.")) == 12_222_272
  assert _count(model, ("nl.", "nl_a.")) == 2 * 2_104_065


def test_state_dict_layout(released):
  """Key names and shapes of the released checkpoints (less DataParallel's "module.")."""
  visual, av = released
  vs = {k: tuple(v.shape) for k, v in visual.state_dict().items()}
  avs = {k: tuple(v.shape) for k, v in av.state_dict().items()}
  assert {k.split(".")[0] for k in vs} == {"resnet", "nl", "ta_net", "fc"}
  assert {k.split(".")[0] for k in avs} == {"a_resnet", "a_fc", "resnet", "nl", "nl_a",
                                            "v2a_attn", "a2v_attn", "ta_net", "fc"}
  assert {k.split(".")[1] for k in vs if k.startswith("resnet.")} == {"0", "1", "4", "5", "6",
                                                                     "7"}
  assert vs["resnet.0.weight"] == (64, 3, 7, 7, 7)
  assert vs["resnet.6.22.conv2.weight"] == (256, 256, 3, 3, 3)  # layer3, block 22
  assert vs["resnet.7.0.downsample.0.weight"] == (2048, 1024, 1, 1, 1)
  assert "resnet.7.2.bn3.running_var" in vs and "resnet.7.3.conv1.weight" not in vs
  assert isinstance(visual.resnet[8], torch.nn.AvgPool3d)
  assert tuple(visual.resnet[8].kernel_size) == (1, 4, 4)
  assert vs["nl.0.alpha"] == (1,) and vs["nl.0.theta.weight"] == (256, 2048)
  assert vs["nl.0.out.weight"] == (2048, 256) and vs["nl.0.bn.running_mean"] == (2048,)
  assert vs["ta_net.conv.0.weight"] == (1, 2048, 1) and "ta_net.conv.0.bias" not in vs
  assert vs["ta_net.conv.1.weight"] == (1,) and vs["ta_net.fc.weight"] == (16, 16)
  assert vs["fc.weight"] == (8, 2048)
  assert avs["a_resnet.0.weight"] == (64, 1, 7, 1) and "a_resnet.1.running_mean" in avs
  assert {k.split(".")[1] for k in avs if k.startswith("a_resnet.")} == {"0", "1", "4", "5",
                                                                        "6", "7"}
  assert avs["a_resnet.7.1.conv2.weight"] == (512, 512, 3, 3)
  assert tuple(av.a_resnet[8].kernel_size) == (4, 8)
  assert avs["a_fc.0.weight"] == (2048, 512) and avs["a_fc.1.running_var"] == (2048,)
  assert avs["nl_a.0.alpha"] == (1,)
  for name in ("v2a_attn", "a2v_attn"):
    for lin in "qkvo":
      assert avs[f"{name}.linear_{lin}.weight"] == (2048, 2048)
      assert avs[f"{name}.linear_{lin}.bias"] == (2048,)
  assert avs["ta_net.conv.0.weight"] == (1, 4096, 1) and avs["fc.weight"] == (8, 4096)


def _video(b=2, s=16, size=32, seed=0):
  g = torch.Generator().manual_seed(seed)
  return torch.randint(0, 256, (b, s, 3, 16, size, size), generator=g).float()


def test_visual_erase_small_forward():
  torch.manual_seed(0)
  model = tr.VisualEraseRef(depth=10, sample_size=32).eval()
  video = _video()
  before = video.clone()
  logits, gamma = model(video)
  assert torch.equal(video, before)  # the release normalises in place; the twin must not
  assert logits.shape == (2, 8) and gamma.shape == (2, 16)
  assert bool((gamma >= 0).all())
  f0 = model(video, return_features=True)
  assert f0["v_backbone"].shape == f0["v_nl"].shape == (2, 16, 512)
  assert torch.equal(f0["logits"], logits) and torch.equal(f0["gamma"], gamma)
  with torch.no_grad():
    model.nl[0].alpha.fill_(1.0)
  f1 = model(video, return_features=True)
  # BN(out(Z)) does not see alpha: the change is exactly the residual x.
  torch.testing.assert_close(f1["v_nl"] - f0["v_nl"], f0["v_backbone"], rtol=1e-5, atol=1e-5)
  model.train()  # batch statistics over the B * S rows, dropout on: still runs
  logits, gamma = model(video)
  assert logits.shape == (2, 8) and bool((gamma >= 0).all())


def test_audio_chunking_is_the_releases():
  audio = torch.randn(3, 1600, 128)
  # The release: transpose, chunk along time, stack, transpose, flatten, unsqueeze.
  a = torch.stack(audio.transpose(0, 1).contiguous().chunk(16, dim=0), dim=0)
  a = torch.flatten(a.transpose(1, 2).contiguous(), start_dim=0, end_dim=1).unsqueeze(1)
  ours = tr.chunk_audio(audio, 16)
  assert torch.equal(ours, a)
  assert torch.equal(ours[5 * 3 + 2, 0], audio[2, 500:600])  # chunk 5 of sample 2


def test_vaanet_erase_small_forward():
  torch.manual_seed(0)
  model = tr.VAANetEraseRef(depth=10, sample_size=32, audio_embed=512).eval()
  video = _video()
  audio = torch.randn(2, 1600, 128, generator=torch.Generator().manual_seed(1))
  logits, gamma = model(video, audio)
  assert logits.shape == (2, 8) and gamma.shape == (2, 16) and bool((gamma >= 0).all())
  feats = model(video, audio, return_features=True)
  for name in ("v_backbone", "v_nl", "a_fc", "a_nl", "v2", "a2"):
    assert feats[name].shape == (2, 16, 512), name
  assert feats["pooled"].shape == (2, 1024)
  chunked = model(video, audio.reshape(2, 16, 100, 128), return_features=True)
  for name in feats:
    assert torch.equal(chunked[name], feats[name]), name
  with pytest.raises(ValueError):
    tr.VAANetEraseRef(depth=10, sample_size=32)  # audio_embed 2048 vs the ResNet-10's 512


def test_attention_heads_are_column_blocks():
  """Head h attends with features [h d, (h + 1) d), as the release's reshape splits them."""
  torch.manual_seed(0)
  mha = tr.MultiHeadAttentionRef(in_features=32, head_num=4)
  q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
  y, attn = mha(q, kv, kv)
  assert y.shape == (2, 5, 32) and attn.shape == (2, 4, 5, 7)
  qp, kp, vp = (torch.relu(lin(x)) for lin, x in
                ((mha.linear_q, q), (mha.linear_k, kv), (mha.linear_v, kv)))
  heads = []
  for h in range(4):
    sl = slice(8 * h, 8 * h + 8)
    w = torch.softmax(qp[..., sl] @ kp[..., sl].transpose(1, 2) / 8 ** 0.5, dim=-1)
    torch.testing.assert_close(attn[:, h], w)
    heads.append(w @ vp[..., sl])
  torch.testing.assert_close(y, torch.relu(mha.linear_o(torch.cat(heads, dim=-1))))
