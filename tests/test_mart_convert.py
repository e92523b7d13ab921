"""MART's released-checkpoint converter (methods/mart/converters.py) against the PyTorch twin of
the released modules (methods/mart/torch_reference.py): the MBT forward (forward_bottleneck_cls's
heads on segment means and the last video block's CLS -> patch attention) after conversion,
strict key accounting and its errors, the stage-1 wrapper (vit. + BERT, TACL, decoder, mask
token) onto MART with the decoder's forward, the CLI command."""
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
from jaxaffect.methods.mart.method import Method
from jaxaffect.methods.mart.model import MBT, segment_mean
from jaxaffect.methods.mart.pretrain_model import MART

torch = pytest.importorskip("torch")
from jaxaffect.methods.mart import torch_reference as tr  # noqa: E402  (needs torch)

TOL = 1e-5
# The parity model: E=32, 2 heads, L=3 blocks of which F=2 fused, 4 bottleneck tokens, clips of
# 4 frames of 32 x 32 (tubelet 2, patch 16: 8 patches), fbank 26 frames x 26 mel (grid 2 x 2).
SIZES = dict(num_classes=5, hidden_size=32, num_heads=2, mlp_dim=64, num_layers=3,
             fusion_layers=2, bottleneck_tokens=4, num_frames=4, image_size=32, patch_size=16,
             tubelet_size=2, num_mel_bins=26, audio_frames=26)
B, NS = 2, 2


def _torch_mbt(s):
  """The released MBT (torch_reference.MBTRef) at our MBT's sizes `s`."""
  return tr.MBTRef(
      n_classes=s["num_classes"], embed_dim=s["hidden_size"], depth=s["num_layers"],
      num_heads=s["num_heads"], mlp_dim=s["mlp_dim"], fusion_layers=s["fusion_layers"],
      bottleneck_tokens=s["bottleneck_tokens"], patch_size=s["patch_size"],
      tubelet_size=s["tubelet_size"], num_frames=s["num_frames"], img_size=s["image_size"],
      num_mel_bins=s["num_mel_bins"], audio_time=s["audio_frames"])


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
  return _randomize(_torch_mbt(SIZES), 1)


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

def _smoke():
  return config_lib.load("configs/mart_ve8.py:smoke", [])


def _smoke_sizes(c):
  m, d = c.model, c.dataset
  return dict(num_classes=d.num_classes, hidden_size=m.hidden_size, num_heads=m.num_heads,
              mlp_dim=m.mlp_dim, num_layers=m.num_layers, fusion_layers=m.fusion_layers,
              bottleneck_tokens=m.bottleneck_tokens, num_frames=d.snippet_len,
              image_size=d.crop_size, patch_size=m.patch_size, tubelet_size=m.tubelet_size,
              num_mel_bins=d.fbank_bins, audio_frames=d.audio_frames)


@pytest.fixture(scope="module")
def smoke_wrapper():
  """(config, MBT sizes, the released stage-1 wrapper at the smoke config's sizes, randomized)."""
  pytest.importorskip("transformers")
  c = _smoke()
  s = _smoke_sizes(c)
  t, dc = c.model.text, c.model.decoder
  torch.manual_seed(0)
  wrapper = _randomize(tr.MARTRef(
      _torch_mbt(s), tr.bert_base_config(
          vocab_size=t.vocab_size, hidden_size=s["hidden_size"], num_hidden_layers=t.num_layers,
          num_attention_heads=t.num_heads, intermediate_size=t.mlp_dim,
          max_position_embeddings=t.max_positions),
      tacl_heads=c.model.tacl_heads, decoder_emb=dc.width, decoder_depth=dc.depth,
      decoder_heads=dc.num_heads, decoder_mlp=dc.mlp_dim), 4)
  return c, s, wrapper


def test_wrapper_onto_mart_and_bare_mbt(smoke_wrapper):
  c, s, wrapper = smoke_wrapper
  e, t = s["hidden_size"], c.model.text
  dc = c.model.decoder
  sd = _sd(wrapper)
  mbt_sd, bert_sd = _sd(wrapper.vit), _sd(wrapper.lan_model.bert)
  tacl_sd, mask = _sd(wrapper.tacl, "tacl."), sd["Vmask_token"]
  num_patches = wrapper.vit.vid_model.num_patches
  # The wrapper's keys are its parts' (MART.py's attribute names); the decoder's position table
  # is a fixed tensor, not a state_dict entry.
  rest = set(sd) - ({"vit." + k for k in mbt_sd} | {"lan_model.bert." + k for k in bert_sd}
                    | set(tacl_sd) | {"Vmask_token"})
  assert {k.split(".")[0] for k in rest} == {"decoder_embd", "decoder_blocks", "decoder_norm",
                                             "decoder_pred"}

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
    theirs = wrapper.forward_d(torch.from_numpy(x))
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
  model = _randomize(_torch_mbt(_smoke_sizes(c)), 10)
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


def test_stage1_forward_matches_released(smoke_wrapper):
  """MART.pretrain on the converted wrapper against MARTRef.forward (MART.py's stage 1 without
  its losses) at batch 1 (the release's, where its segment-major video rows and b-major text
  rows agree), all words real (the release masks none), our AttMask draw fed to both."""
  c, s, wrapper = smoke_wrapper
  # Every clip masked (no 0.5 gate), so the mask token and the decoder inputs always differ.
  c = config_lib.load("configs/mart_ve8.py:smoke", ["mask.clip_prob=1.0"])
  model = Method(c).model
  params = converters.mart(_sd(wrapper), c).variables["params"]
  ns, length = int(c.dataset.num_segments), int(c.text.max_len)
  rng = np.random.default_rng(11)
  video = rng.uniform(0, 255, (1, ns, s["num_frames"], s["image_size"], s["image_size"], 3))
  video = video.astype(np.float32)
  fbank = rng.standard_normal((1, ns, s["audio_frames"], s["num_mel_bins"])).astype(np.float32)
  ids = rng.integers(0, int(c.model.text.vocab_size), (1, ns, length)).astype(np.int32)
  out = jax.jit(lambda p: model.apply(
      {"params": p}, video, fbank, ids, np.ones_like(ids, bool), 0.5, method=MART.pretrain,
      rngs={"masking": jax.random.key(2)}))(params)
  mask = np.asarray(out["mask"])
  assert mask.sum(1).tolist() == [mask.shape[1] // 2] * mask.shape[0]  # ratio 0.5
  with torch.no_grad():
    ref = wrapper(torch.from_numpy(video.transpose(0, 1, 5, 2, 3, 4).copy()),
                  torch.from_numpy(fbank.reshape(1, -1, s["num_mel_bins"])),
                  torch.from_numpy(ids.reshape(ns, length).astype(np.int64)),
                  torch.from_numpy(mask.copy()))
  pairs = {"reconstruction": "reconstruction", "intra_attention": "intra",
           "tacl_inter_attention": "inter_attention", "tacl_v2l": "v2l", "tacl_a2l": "a2l",
           "tacl_v2l_hat": "v2l_hat", "tacl_a2l_hat": "a2l_hat", "tacl_logits_v": "logits_v",
           "tacl_logits_a": "logits_a", "logits_a_stage1": "output_a",
           "logits_v_stage1": "output_v"}
  diffs = {k: _max_diff(out[k], ref[r]) for k, r in pairs.items()}
  print("stage 1:", ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))
  for r in ("reconstruction", "output_v", "logits_v", "v2l_hat"):  # not vacuous comparisons
    assert float(np.abs(ref[r].numpy()).max()) > 0.1, r
  assert max(diffs.values()) < TOL, diffs
