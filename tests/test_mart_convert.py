"""MART's released-checkpoint converter (methods/mart/converters.py) against a small PyTorch
re-implementation of the released MBT (models/mbt/{MBT,VanillaViT}.py, AST's timm DeiT) written
here from its semantics: fused qkv with q_bias/v_bias (video) or a qkv bias (audio), the video's
sin-cos table with CLS at row 0, AST's stride-10 patches over the transposed fbank, bottleneck
fusion in the last F blocks (audio block first), forward_bottleneck_cls's heads on segment means
and the last video block's CLS -> patch attention. Also: strict key accounting and its errors,
the stage-1 wrapper (vit. + BERT, TACL, decoder, mask token) onto MART, the CLI command."""
import json
import os

import jax
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect.convert import __main__ as cli
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.converted_checkpoint import META_FILE
from jaxaffect.methods.mart import converters, hf_convert
from jaxaffect.methods.mart.decoder import MAEDecoder
from jaxaffect.methods.mart.encoders import BertEncoder
from jaxaffect.methods.mart.model import MBT, segment_mean

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-5
# The parity model: E=32, 2 heads, L=3 blocks of which F=2 fused, 4 bottleneck tokens, clips of
# 4 frames of 32 x 32 (tubelet 2, patch 16: 8 patches), fbank 26 frames x 26 mel (grid 2 x 2).
SIZES = dict(num_classes=5, hidden_size=32, num_heads=2, mlp_dim=64, num_layers=3,
             fusion_layers=2, bottleneck_tokens=4, num_frames=4, image_size=32, patch_size=16,
             tubelet_size=2, num_mel_bins=26, audio_frames=26)
B, NS = 2, 2


# --- the released MBT, re-written in torch (timm naming) --------------------------------------

class TorchAttention(torch.nn.Module):
  """timm's fused-qkv attention; qv_bias: VideoMAE's (a bias-free qkv plus q_bias and v_bias, the
  key's bias fixed at zero), else timm DeiT's qkv bias. Returns (out, weights [B, H, N, N])."""

  def __init__(self, dim, heads, qv_bias):
    super().__init__()
    self.heads = heads
    self.qkv = torch.nn.Linear(dim, 3 * dim, bias=not qv_bias)
    if qv_bias:
      self.q_bias = torch.nn.Parameter(torch.zeros(dim))
      self.v_bias = torch.nn.Parameter(torch.zeros(dim))
    self.proj = torch.nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    if hasattr(self, "q_bias"):
      bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
      qkv = F.linear(x, self.qkv.weight, bias)
    else:
      qkv = self.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    w = torch.softmax((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
    return self.proj((w @ v).transpose(1, 2).reshape(b, n, c)), w


class TorchMlp(torch.nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class TorchBlock(torch.nn.Module):
  """timm Block, pre-LN: x + attn(norm1(x)), then x + mlp(norm2(x)); returns (x, weights)."""

  def __init__(self, dim, heads, hidden, qv_bias, eps=1e-6):
    super().__init__()
    self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=eps), torch.nn.LayerNorm(dim, eps=eps)
    self.attn = TorchAttention(dim, heads, qv_bias)
    self.mlp = TorchMlp(dim, hidden)

  def forward(self, x):
    y, w = self.attn(self.norm1(x))
    x = x + y
    return x + self.mlp(self.norm2(x)), w


def _proj(conv):
  m = torch.nn.Module()
  m.proj = conv
  return m


def _blocks(n, e, heads, hidden, qv_bias):
  return torch.nn.ModuleList(TorchBlock(e, heads, hidden, qv_bias) for _ in range(n))


class TorchMBT(torch.nn.Module):
  """Parameters named as the released state_dict (unused heads included)."""

  def __init__(self, s):
    super().__init__()
    e, h, mlp, n = s["hidden_size"], s["num_heads"], s["mlp_dim"], s["num_layers"]
    t, p = s["tubelet_size"], s["patch_size"]
    grid = ((s["num_mel_bins"] - 16) // 10 + 1) * ((s["audio_frames"] - 16) // 10 + 1)
    self.s = s
    self.vid_model = torch.nn.Module()
    v = self.vid_model
    v.patch_embed = _proj(torch.nn.Conv3d(3, e, (t, p, p), stride=(t, p, p)))
    v.cls_token = torch.nn.Parameter(torch.zeros(1, 1, e))
    v.blocks = _blocks(n, e, h, mlp, qv_bias=True)
    v.fc_norm = torch.nn.LayerNorm(e, eps=1e-6)
    v.head = torch.nn.Linear(e, 7)
    self.ast_model = torch.nn.Module()
    a = self.ast_model.v = torch.nn.Module()
    a.cls_token = torch.nn.Parameter(torch.zeros(1, 1, e))
    a.dist_token = torch.nn.Parameter(torch.zeros(1, 1, e))
    a.pos_embed = torch.nn.Parameter(torch.zeros(1, 2 + grid, e))
    a.patch_embed = _proj(torch.nn.Conv2d(1, e, 16, stride=10))
    a.blocks = _blocks(n, e, h, mlp, qv_bias=False)
    a.norm = torch.nn.LayerNorm(e, eps=1e-6)
    a.head, a.head_dist = torch.nn.Linear(e, 6), torch.nn.Linear(e, 6)
    self.ast_model.mlp_head = torch.nn.Sequential(torch.nn.LayerNorm(e), torch.nn.Linear(e, 6))
    c = s["num_classes"]
    self.a_fc, self.v_fc = torch.nn.Linear(e, c), torch.nn.Linear(e, c)
    self.a_s_fc, self.v_s_fc = torch.nn.Linear(e, 2), torch.nn.Linear(e, 2)
    self.bottleneck = torch.nn.Parameter(torch.zeros(1, s["bottleneck_tokens"], e))

  def forward(self, visual, audio):
    """forward_bottleneck_cls: visual [B, Ns, 3, T, H, W] (0-255), audio [B, Ns * Ta, M] ->
    (output_a, output_v) [B, C] and the intra map [Ns * B, Nv] (clips segment-major, as the
    release flattens them)."""
    s, v, a = self.s, self.vid_model, self.ast_model.v
    first = s["num_layers"] - s["fusion_layers"]
    visual = visual.transpose(0, 1) / 255.0 - 100.0 / 255.0
    ns, b = visual.shape[:2]
    x = v.patch_embed.proj(visual.flatten(0, 1)).flatten(2).transpose(1, 2)
    x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = x + torch.from_numpy(_sinusoid(x.shape[1], x.shape[2]))
    for blk in v.blocks[:first]:
      x = blk(x)[0]
    chunks = audio.transpose(0, 1).chunk(ns, dim=0)  # [Ta, B, M] each
    y = torch.stack(chunks).transpose(1, 2).flatten(0, 1)  # [Ns * B, Ta, M]
    y = a.patch_embed.proj(y.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
    n = y.shape[0]
    y = torch.cat([a.cls_token.expand(n, -1, -1), a.dist_token.expand(n, -1, -1), y], 1)
    y = y + a.pos_embed
    for blk in a.blocks[:first]:
      y = blk(y)[0]
    bott = self.bottleneck.repeat(n, 1, 1)
    tv, ta = x.shape[1], y.shape[1]
    for vb, ab in zip(v.blocks[first:], a.blocks[first:]):
      out_a = ab(torch.cat([y, bott], 1))[0]
      out_v, w = vb(torch.cat([x, bott], 1))
      y, x = out_a[:, :ta], out_v[:, :tv]
      bott = (out_a[:, ta:] + out_v[:, tv:]) / 2
    intra = w[:, :, :tv, :tv][:, :, :1, 1:].mean(dim=1).mean(dim=1)
    fa = a.norm(y)[:, :2].mean(dim=1)
    fv = v.fc_norm(x[:, :1]).mean(dim=1)
    seg_mean = lambda f: f.view(ns, b, -1).transpose(0, 1).mean(dim=1)
    return self.a_fc(seg_mean(fa)), self.v_fc(seg_mean(fv)), intra


def _sinusoid(n, d):
  """VideoMAE's table: angle pos / 10000^(2 (j // 2) / d), sin on even, cos on odd columns."""
  angle = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)]
                    for pos in range(n)])
  angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
  return angle.astype(np.float32)[None]


def _randomize(module, seed):
  """Every tensor off its init: weights ~ N(0, 1 / fan_in), LayerNorm scales 1 + N(0, 0.2^2),
  the rest (biases, tokens, tables) N(0, 0.2^2), so a swapped or misplaced tensor shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in module.modules():
      for name, p in mod.named_parameters(recurse=False):
        r = torch.randn(p.shape, generator=g)
        if isinstance(mod, torch.nn.LayerNorm) and name == "weight":
          p.copy_(1 + 0.2 * r)
        elif name == "weight" and p.ndim >= 2:
          p.copy_(r / p[0].numel() ** 0.5)
        else:
          p.copy_(0.2 * r)
  return module.eval()


def _sd(module, prefix=""):
  return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def released():
  torch.manual_seed(0)
  return _randomize(TorchMBT(SIZES), 1)


def _inputs(seed=3):
  rng = np.random.default_rng(seed)
  video = rng.uniform(0, 255, (B, NS, 4, 32, 32, 3)).astype(np.float32)
  audio = rng.standard_normal((B, NS * 26, 26)).astype(np.float32)
  return video, audio


@pytest.mark.parametrize("scan", [True, False])
def test_mbt_matches_released_forward(released, scan):
  model = MBT(**SIZES, scan=scan)
  conv = converters.mbt(_sd(released), model)
  # Every key is used or dropped with a reason: exactly the six unused heads (14 tensors).
  sd = _sd(released)
  assert set(conv.used) | set(conv.dropped) == set(sd)
  assert not set(conv.used) & set(conv.dropped)
  assert sorted(conv.dropped) == sorted(
      k for k in sd if k.split(".")[0] in ("a_s_fc", "v_s_fc") or ".head" in k
      or "mlp_head" in k)
  assert len(conv.dropped) == 14
  assert sorted(conv.used["vid_model.blocks.0.attn.qkv.weight"].split(", ")) == [
      f"params/video/encoder/layers_0/{m}/kernel" for m in ("key", "query", "value")]
  assert sorted(conv.used["ast_model.v.blocks.2.attn.qkv.bias"].split(", ")) == [
      f"params/fusion_layers_1/audio/{m}/bias" for m in ("key", "query", "value")]

  video, audio = _inputs()
  out = jax.jit(lambda p, v, a: model.apply({"params": p}, v, a, with_attention=True))(
      conv.variables["params"], video.reshape(B * NS, 4, 32, 32, 3),
      audio.reshape(B * NS, 26, 26))
  with torch.no_grad():
    ta, tv, intra = released(torch.from_numpy(video.transpose(0, 1, 5, 2, 3, 4).copy()),
                             torch.from_numpy(audio))
  d_a = _max_diff(segment_mean(out["logits_a"], NS), ta)
  d_v = _max_diff(segment_mean(out["logits_v"], NS), tv)
  # The release's clips are segment-major (row s * B + b), ours video-major (b * Ns + s).
  intra = intra.reshape(NS, B, -1).transpose(0, 1).reshape(B * NS, -1)
  d_att = _max_diff(out["intra_attention"], intra)
  print(f"scan={scan}: logits_a {d_a:.2e}, logits_v {d_v:.2e}, intra {d_att:.2e}")
  assert out["intra_attention"].shape == (B * NS, 8)
  assert float(np.abs(np.asarray(tv)).max()) > 0.1  # not a vacuous comparison
  assert d_a < TOL and d_v < TOL and d_att < TOL


def test_missing_extra_and_misshapen_keys_are_named(released):
  model = MBT(**SIZES, scan=False)
  sd = _sd(released)
  bad = dict(sd)
  del bad["vid_model.blocks.2.attn.q_bias"]
  with pytest.raises(ConversionError, match=(
      r"1 missing keys:\n    vid_model\.blocks\.2\.attn\.q_bias \(for "
      r"params/fusion_layers_1/video/query/bias, PyTorch shape \(32,\)\)")):
    converters.mbt(bad, model)

  bad = dict(sd, **{"vid_model.blocks.3.norm1.weight": np.ones(32, np.float32)})
  with pytest.raises(ConversionError, match=(
      r"1 unexpected keys:\n    vid_model\.blocks\.3\.norm1\.weight\n")):
    converters.mbt(bad, model)

  # A fused tensor is reported once, under its own name and full shape.
  bad = dict(sd)
  del bad["ast_model.v.blocks.0.attn.qkv.weight"]
  bad["ast_model.v.blocks.1.attn.qkv.bias"] = np.zeros(64, np.float32)
  with pytest.raises(ConversionError) as e:
    converters.mbt(bad, model)
  msg = str(e.value)
  assert ("1 missing keys:\n    ast_model.v.blocks.0.attn.qkv.weight (for "
          "params/audio/encoder/layers_0/key/kernel, PyTorch shape (96, 32))") in msg
  assert ("1 shape mismatches:\n    ast_model.v.blocks.1.attn.qkv.bias: checkpoint shape "
          "(64,), model expects (96,)") in msg
  assert "hint: do config.model" in msg


# --- the stage-1 wrapper onto MART (configs/mart_ve8.py:smoke) --------------------------------

class TorchTACLNames(torch.nn.Module):
  """TACL's released parameter names and shapes (its forward is tested in test_mart_tacl.py)."""

  def __init__(self, e, classes):
    super().__init__()
    lin = lambda o=e: torch.nn.Linear(e, o)
    for name in ("v2l_attn", "a2l_attn"):
      m = torch.nn.Module()
      m.linear_q, m.linear_k, m.linear_v, m.linear_o = lin(), lin(), lin(), lin()
      setattr(self, name, m)
    self.v_norm, self.a_norm, self.l_norm = (torch.nn.LayerNorm(e) for _ in range(3))
    for name, out in (("v_proj", e), ("a_proj", e), ("v_fc", classes), ("a_fc", classes)):
      m = torch.nn.Module()
      m.fc1, m.fc2 = lin(), torch.nn.Linear(e, out)
      setattr(self, name, m)
    for name in ("v2a_contrast", "a2v_contrast"):
      m = torch.nn.Module()
      m.net = torch.nn.Sequential(*[torch.nn.Conv1d(e, e, 3, padding=1) if i % 2 == 0
                                    else torch.nn.ReLU() for i in range(8)])
      setattr(self, name, m)


class TorchDecoder(torch.nn.Module):
  """MART.py's decoder: decoder_embd, + sin-cos table, decoder_blocks (timm Blocks with q/v
  bias and PyTorch's default LayerNorm eps 1e-5), decoder_norm, decoder_pred."""

  def __init__(self, e, width, depth, heads, hidden, out):
    super().__init__()
    self.decoder_embd = torch.nn.Linear(e, width)
    self.decoder_blocks = torch.nn.ModuleList(
        TorchBlock(width, heads, hidden, qv_bias=True, eps=1e-5) for _ in range(depth))
    self.decoder_norm = torch.nn.LayerNorm(width)
    self.decoder_pred = torch.nn.Linear(width, out)

  def forward(self, x):
    x = self.decoder_embd(x)
    x = x + torch.from_numpy(_sinusoid(x.shape[1], x.shape[2]))
    for blk in self.decoder_blocks:
      x = blk(x)[0]
    return self.decoder_pred(self.decoder_norm(x))


def _smoke():
  return config_lib.load("configs/mart_ve8.py:smoke", [])


def _smoke_sizes(c):
  m, d = c.model, c.dataset
  return dict(num_classes=d.num_classes, hidden_size=m.hidden_size, num_heads=m.num_heads,
              mlp_dim=m.mlp_dim, num_layers=m.num_layers, fusion_layers=m.fusion_layers,
              bottleneck_tokens=m.bottleneck_tokens, num_frames=d.snippet_len,
              image_size=d.crop_size, patch_size=m.patch_size, tubelet_size=m.tubelet_size,
              num_mel_bins=d.fbank_bins, audio_frames=d.audio_frames)


def test_wrapper_onto_mart_and_bare_mbt():
  transformers = pytest.importorskip("transformers")
  c = _smoke()
  s = _smoke_sizes(c)
  e, t = s["hidden_size"], c.model.text
  torch.manual_seed(0)
  mbt_sd = _sd(_randomize(TorchMBT(s), 4))
  bert = transformers.BertModel(transformers.BertConfig(
      vocab_size=t.vocab_size, hidden_size=e, num_hidden_layers=t.num_layers,
      num_attention_heads=t.num_heads, intermediate_size=t.mlp_dim,
      max_position_embeddings=t.max_positions))
  bert_sd = _sd(_randomize(bert, 5))
  dc = c.model.decoder
  num_patches = (s["num_frames"] // 2) * (s["image_size"] // 16) ** 2
  decoder = _randomize(TorchDecoder(e, dc.width, dc.depth, dc.num_heads, dc.mlp_dim, 1536), 6)
  tacl_sd = _sd(_randomize(TorchTACLNames(e, s["num_classes"]), 7), "tacl.")
  mask = np.random.default_rng(8).standard_normal((1, 1, e)).astype(np.float32)
  sd = {**{"vit." + k: v for k, v in mbt_sd.items()},
        **{"lan_model.bert." + k: v for k, v in bert_sd.items()}, **tacl_sd, **_sd(decoder),
        "Vmask_token": mask}

  conv = converters.mart(sd, c)
  p = jax.tree.map(np.asarray, conv.variables["params"])
  assert sorted(p) == ["decoder", "mask_token", "mbt", "tacl", "text"]
  assert conv.subtrees == [f"params/{k}" for k in sorted(p)]
  assert set(conv.used) | set(conv.dropped) == set(sd)
  # The MBT part equals the bare converter's; the text part hf_convert.bert's.
  bare = converters.mbt(mbt_sd, MBT(**s, scan=True)).variables["params"]
  jax.tree.map(np.testing.assert_array_equal, p["mbt"], jax.tree.map(np.asarray, bare))
  text = hf_convert.bert(bert_sd, BertEncoder(
      vocab_size=t.vocab_size, hidden_size=e, num_layers=t.num_layers, num_heads=t.num_heads,
      mlp_dim=t.mlp_dim, max_positions=t.max_positions)).variables["params"]
  jax.tree.map(np.testing.assert_array_equal, p["text"], jax.tree.map(np.asarray, text))
  np.testing.assert_array_equal(p["mask_token"], mask)
  # TACL: one tensor of each kind, by the names in tacl.py's docstring.
  h = c.model.tacl_heads
  np.testing.assert_array_equal(p["tacl"]["ln_text"]["scale"], tacl_sd["tacl.l_norm.weight"])
  np.testing.assert_array_equal(p["tacl"]["cross_audio"]["key"]["kernel"],
                                tacl_sd["tacl.a2l_attn.linear_k.weight"].T.reshape(e, h, -1))
  np.testing.assert_array_equal(p["tacl"]["cross_video"]["out"]["kernel"],
                                tacl_sd["tacl.v2l_attn.linear_o.weight"].T.reshape(h, -1, e))
  np.testing.assert_array_equal(p["tacl"]["cpc_audio"]["conv_3"]["kernel"],
                                tacl_sd["tacl.a2v_contrast.net.6.weight"].transpose(2, 1, 0))
  np.testing.assert_array_equal(p["tacl"]["cls_video"]["mlp_out"]["bias"],
                                tacl_sd["tacl.v_fc.fc2.bias"])
  np.testing.assert_array_equal(p["tacl"]["proj_audio"]["mlp_in"]["kernel"],
                                tacl_sd["tacl.a_proj.fc1.weight"].T)
  # The decoder against its torch twin (LayerNorm eps 1e-5 on both sides).
  x = np.random.default_rng(9).standard_normal((2, num_patches, e)).astype(np.float32)
  ours = MAEDecoder(num_tokens=num_patches, width=dc.width, depth=dc.depth,
                    num_heads=dc.num_heads, mlp_dim=dc.mlp_dim, out_dim=1536).apply(
                        {"params": p["decoder"]}, x)
  with torch.no_grad():
    theirs = decoder(torch.from_numpy(x))
  d_dec = _max_diff(ours, theirs)
  print(f"decoder: {d_dec:.2e}")
  assert d_dec < 1e-5

  # A bare MBT takes the wrapper's vit. part and accounts the rest as dropped.
  conv = converters.mbt(sd, MBT(**s, scan=True))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, conv.variables["params"]),
               jax.tree.map(np.asarray, bare))
  wrapper_keys = [k for k in sd if not k.startswith("vit.")]
  assert all("MART wrapper's" in conv.dropped[k] for k in wrapper_keys)
  assert "MART wrapper's TACL block" in conv.dropped["tacl.v_fc.fc1.weight"]


def test_cli_converts_released_file(tmp_path):
  c = _smoke()
  torch.manual_seed(0)
  model = _randomize(TorchMBT(_smoke_sizes(c)), 10)
  path = str(tmp_path / "best.ckpt")
  torch.save(model.state_dict(), path)
  out = str(tmp_path / "out")
  assert cli.main(["mart", "--config", "configs/mart_ve8.py:smoke", path, out]) == 0
  with open(os.path.join(out, META_FILE)) as f:
    meta = json.load(f)
  assert meta["converter"] == "mart" and meta["subtrees"] == ["params/mbt"]
  assert meta["info"]["layout"] == "released MBT state_dict (best.ckpt)"
  assert meta["num_keys"] + len(meta["dropped"]) == len(model.state_dict())
  assert meta["key_map"]["bottleneck"] == "params/mbt/bottleneck"
