"""MART's encoders (methods/mart/encoders.py) against Hugging Face `transformers` models of the
same weights (methods/mart/hf_convert.py): VideoMAE, AST, BERT with a padding mask; MART's CLS
layout of the VideoMAE ViT; scanned == unscanned; strict key accounting and the transformers 4.x
key spellings; the full-size parameter counts (abstract shapes only)."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.mart import hf_convert
from jaxaffect.methods.mart.encoders import AudioSpectrogramTransformer, BertEncoder, VideoViT
from jaxaffect.nn import count_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _perturb(model, seed):
  """Every parameter moved off its init (HF zeroes biases and sets LayerNorms to 1), so a
  mix-up of two tensors cannot pass."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


def _sd(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _apply(model, params, *args, **kwargs):
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a, **kwargs))(params, *args)


# --- VideoMAE -------------------------------------------------------------------------------

def _videomae_hf(seed=0, **kw):
  cfg = transformers.VideoMAEConfig(
      image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3, **kw)
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  return _perturb(transformers.VideoMAEForVideoClassification(cfg), seed + 1)


def _video(seed=2, b=2):
  # Scaled so that the tokens stay O(1) with these perturbed weights (1536 inputs per tubelet):
  # at std 1 they reach ~12 and float32 rounding alone approaches the 1e-5 tolerance.
  x = 0.2 * np.random.default_rng(seed).standard_normal((b, 4, 32, 32, 3))
  return x.astype(np.float32)


def test_videomae_matches_transformers():
  hf = _videomae_hf()
  model = VideoViT(**hf_convert.videomae_kwargs(hf.config.to_dict()), scan=False)
  conv = hf_convert.videomae(_sd(hf), model)
  assert conv.dropped == {k: v for k, v in conv.dropped.items() if k.startswith("classifier.")}
  assert len(conv.dropped) == 2
  x = _video()
  out = _apply(model, conv.variables["params"], x)
  with torch.no_grad():
    pv = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())  # [B, T, C, H, W]
    hidden = hf.videomae(pv).last_hidden_state
    pooled = hf.fc_norm(hidden.mean(1))
  d_tok, d_pool = _max_diff(out["tokens"], hidden), _max_diff(out["pooled"], pooled)
  print(f"VideoMAE parity: tokens {d_tok:.2e}, pooled {d_pool:.2e}")
  assert out["tokens"].shape == (2, 8, 32)
  assert d_tok < TOL and d_pool < TOL


def test_videomae_mart_cls_layout_on_transformers_blocks():
  """MART's layout (CLS first, then a sin-cos table one row longer, fc_norm on CLS) computed
  with HF's own patch embedding, table and layers, against VideoViT(use_cls=True, pool="cls")."""
  from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table
  hf = _videomae_hf(seed=3)
  torch.manual_seed(4)
  cls = torch.randn(1, 1, 32)
  kw = dict(hf_convert.videomae_kwargs(hf.config.to_dict()), use_cls=True, pool="cls")
  model = VideoViT(**kw, scan=False)
  conv = hf_convert.videomae(_sd(hf), model, extra={"cls_token": cls.numpy()})
  x = _video(seed=5)
  out = _apply(model, conv.variables["params"], x)
  with torch.no_grad():
    pv = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())
    patches = hf.videomae.embeddings.patch_embeddings(pv)
    h = torch.cat([cls.expand(2, -1, -1), patches], 1) + get_sinusoid_encoding_table(9, 32)
    h = hf.videomae.encoder(h).last_hidden_state
    pooled = hf.fc_norm(h[:, 0])
  d_tok, d_pool = _max_diff(out["tokens"], h), _max_diff(out["pooled"], pooled)
  print(f"VideoMAE (MART CLS layout) parity: tokens {d_tok:.2e}, pooled {d_pool:.2e}")
  assert out["tokens"].shape == (2, 9, 32)
  assert d_tok < TOL and d_pool < TOL
  # Without the CLS tensor the conversion names it.
  with pytest.raises(ConversionError, match=r"missing keys:\n    cls_token "):
    hf_convert.videomae(_sd(hf), model)


# --- AST -----------------------------------------------------------------------------------

def _ast_hf(seed=0, max_length=40):
  cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, patch_size=16, frequency_stride=10,
                               time_stride=10, num_mel_bins=36, max_length=max_length,
                               num_labels=3)
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  return _perturb(transformers.ASTForAudioClassification(cfg), seed + 1)


def test_ast_matches_transformers():
  hf = _ast_hf()
  model = AudioSpectrogramTransformer(**hf_convert.ast_kwargs(hf.config.to_dict()), scan=False)
  assert model.grid == (3, 3)
  conv = hf_convert.ast(_sd(hf), model)
  assert sorted(conv.dropped) == ["classifier.dense.bias", "classifier.dense.weight",
                                  "classifier.layernorm.bias", "classifier.layernorm.weight"]
  x = np.random.default_rng(0).standard_normal((2, 40, 36)).astype(np.float32)  # [B, T, F]
  out = _apply(model, conv.variables["params"], x)
  with torch.no_grad():
    ref = hf.audio_spectrogram_transformer(torch.from_numpy(x))
  d_tok = _max_diff(out["tokens"], ref.last_hidden_state)
  d_pool = _max_diff(out["pooled"], ref.pooler_output)
  print(f"AST parity: tokens {d_tok:.2e}, pooled {d_pool:.2e}")
  assert out["tokens"].shape == (2, 11, 32)
  assert d_tok < TOL and d_pool < TOL


def test_ast_position_crop():
  # A checkpoint trained on a longer input (grid 3 x 5) into the 3 x 3 model: time columns 1..3.
  hf = _ast_hf(seed=7, max_length=60)
  model = AudioSpectrogramTransformer(**hf_convert.ast_kwargs(hf.config.to_dict(), 40),
                                      scan=False)
  conv = hf_convert.ast(_sd(hf), model)
  table = hf.audio_spectrogram_transformer.embeddings.position_embeddings.detach().numpy()
  want = np.concatenate([table[0, :2], table[0, 2:].reshape(3, 5, 32)[:, 1:4].reshape(9, 32)])
  np.testing.assert_array_equal(conv.variables["params"]["pos_embed"][0], want)
  assert conv.info["cropped_positions"] == "(3, 5) -> (3, 3)"
  # AudioSet's 12 x 101 grid -> MART's 12 x 9 (128 mel x 100 frames): columns 46..54.
  assert hf_convert.ast_grid(128, 1024) == (12, 101) and hf_convert.ast_grid(128, 100) == (12, 9)
  full = np.arange(2 + 12 * 101, dtype=np.float32)[None, :, None]
  cropped = hf_convert.crop_ast_positions(full, (12, 101), (12, 9))
  grid = (np.arange(12 * 101).reshape(12, 101)[:, 46:55] + 2).reshape(-1)
  np.testing.assert_array_equal(cropped[0, :, 0], np.concatenate([[0, 1], grid]))


# --- BERT ----------------------------------------------------------------------------------

def _bert_hf(seed=0):
  cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=24, type_vocab_size=2)
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  return _perturb(transformers.BertModel(cfg), seed + 1)


def _bert_inputs():
  rng = np.random.default_rng(1)
  ids = rng.integers(1, 99, (2, 7)).astype(np.int32)
  mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], np.int32)
  ids[1, 4:] = 0
  types = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]], np.int32)
  return ids, mask, types


def test_bert_matches_transformers_with_padding():
  hf = _bert_hf()
  model = BertEncoder(**hf_convert.bert_kwargs(hf.config.to_dict()), scan=False)
  conv = hf_convert.bert(_sd(hf), model)
  ids, mask, types = _bert_inputs()
  out = _apply(model, conv.variables["params"], ids, mask, types)
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
             token_type_ids=torch.from_numpy(types).long())
  d_h = _max_diff(out["last_hidden_state"], ref.last_hidden_state)
  d_p = _max_diff(out["pooler_output"], ref.pooler_output)
  print(f"BERT parity (padding mask): last_hidden_state {d_h:.2e}, pooler {d_p:.2e}")
  assert d_h < TOL and d_p < TOL
  # The mask matters: without it the padded row's real tokens change.
  unmasked = _apply(model, conv.variables["params"], ids, None, types)
  assert _max_diff(unmasked["last_hidden_state"][1, :4], ref.last_hidden_state[1, :4]) > 1e-3


# --- shared --------------------------------------------------------------------------------

def test_scanned_equals_unscanned():
  hf_v, hf_a, hf_b = _videomae_hf(seed=11), _ast_hf(seed=12), _bert_hf(seed=13)
  cases = [
      (VideoViT(**hf_convert.videomae_kwargs(hf_v.config.to_dict())), hf_convert.videomae,
       _sd(hf_v), (_video(),), "tokens"),
      (AudioSpectrogramTransformer(**hf_convert.ast_kwargs(hf_a.config.to_dict())),
       hf_convert.ast, _sd(hf_a),
       (np.random.default_rng(3).standard_normal((2, 40, 36)).astype(np.float32),), "tokens"),
      (BertEncoder(**hf_convert.bert_kwargs(hf_b.config.to_dict())), hf_convert.bert, _sd(hf_b),
       _bert_inputs(), "last_hidden_state"),
  ]
  for scanned, convert, sd, args, key in cases:
    assert scanned.scan
    unscanned = scanned.clone(scan=False)
    p_scan = convert(sd, scanned).variables["params"]
    p_loop = convert(sd, unscanned).variables["params"]
    assert "layers" in p_scan["encoder"] and "layers_1" in p_loop["encoder"]
    assert p_scan["encoder"]["layers"]["query"]["kernel"].shape[0] == 2
    a, b = _apply(scanned, p_scan, *args), _apply(unscanned, p_loop, *args)
    assert _max_diff(a[key], b[key]) < 1e-6, type(scanned).__name__
    # The scanned params are exactly what the model's init lays out.
    init = jax.eval_shape(lambda: scanned.init(jax.random.key(0), *args))["params"]
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(init))
    assert shapes == jax.tree.map(lambda x: x.shape, p_scan)


def test_key_accounting_and_v4_layouts():
  hf = _bert_hf(seed=21)
  model = BertEncoder(**hf_convert.bert_kwargs(hf.config.to_dict()), scan=False)
  sd = _sd(hf)
  ref = hf_convert.bert(sd, model).variables["params"]
  # BertForPreTraining as saved by transformers 4.x / the original bert-base-uncased file:
  # "bert." prefix, LayerNorm gamma/beta, heads and the position_ids buffer -> same params.
  old = {}
  for k, v in sd.items():
    k = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$",
                                                                "LayerNorm.beta", k))
    old["bert." + k] = v
  old["bert.embeddings.position_ids"] = np.arange(24)[None]
  old["cls.predictions.bias"] = np.zeros(99, np.float32)
  old["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)
  conv = hf_convert.bert(old, model)
  jax.tree.map(np.testing.assert_array_equal, conv.variables["params"], ref)
  assert set(conv.dropped) == {"bert.embeddings.position_ids", "cls.predictions.bias",
                               "cls.seq_relationship.weight"}
  assert conv.used["bert.encoder.layer.1.output.LayerNorm.gamma"] == (
      "params/encoder/layers_1/ln_mlp/scale")
  # Missing, unexpected and mis-shaped keys are all named in one error.
  bad = dict(sd)
  del bad["encoder.layer.1.attention.self.key.bias"]
  bad["encoder.layer.2.attention.self.key.bias"] = np.zeros(32, np.float32)
  bad["pooler.dense.weight"] = np.zeros((32, 31), np.float32)
  with pytest.raises(ConversionError) as e:
    hf_convert.bert(bad, model)
  msg = str(e.value)
  assert "1 missing keys:\n    encoder.layer.1.attention.self.key.bias (for " \
         "params/encoder/layers_1/key/bias, PyTorch shape (32,))" in msg
  assert "1 unexpected keys:\n    encoder.layer.2.attention.self.key.bias" in msg
  assert "pooler.dense.weight: checkpoint shape (32, 31), model expects (32, 32)" in msg

  # VideoMAE 4.x: q_bias / v_bias.
  hf_v = _videomae_hf(seed=22)
  vmodel = VideoViT(**hf_convert.videomae_kwargs(hf_v.config.to_dict()), scan=False)
  sd_v = _sd(hf_v)
  old_v = {re.sub(r"attention\.attention\.(q|v)\w*\.bias$",
                  lambda m: f"attention.attention.{m.group(1)}_bias", k): v
           for k, v in sd_v.items()}
  assert "videomae.encoder.layer.0.attention.attention.q_bias" in old_v
  jax.tree.map(np.testing.assert_array_equal, hf_convert.videomae(old_v, vmodel).variables,
               hf_convert.videomae(sd_v, vmodel).variables)

  # AST 4.x: encoder.layer.i.attention.attention.query, intermediate.dense, output.dense.
  hf_a = _ast_hf(seed=23)
  amodel = AudioSpectrogramTransformer(**hf_convert.ast_kwargs(hf_a.config.to_dict()),
                                       scan=False)
  sd_a = _sd(hf_a)
  v4 = {"attention.q_proj": "attention.attention.query", "attention.k_proj":
        "attention.attention.key", "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense"}
  old_a = {}
  for k, v in sd_a.items():
    k = k.replace(".layers.", ".encoder.layer.")
    for new, o in v4.items():
      k = k.replace(f".{new}.", f".{o}.")
    old_a[k] = v
  assert "audio_spectrogram_transformer.encoder.layer.1.intermediate.dense.weight" in old_a
  jax.tree.map(np.testing.assert_array_equal, hf_convert.ast(old_a, amodel).variables,
               hf_convert.ast(sd_a, amodel).variables)


def test_full_size_parameter_counts():
  """Counted from abstract shapes (no init). By hand, E = 768, 12 blocks:
  one pre-LN block with all biases = 4 E^2 (q, k, v, out) + 2 * 4 E^2 (MLP) + 4 E + 4E + E
  (biases: q, k, v, out = 4E; mlp_in 4E; mlp_out E) + 4 E (two LayerNorms) = 7,087,872;
  VideoMAE drops the key bias: 7,087,104.
  VideoMAE ViT-B/16 at 112 px, MART's layout: tubelet embed 3*2*16*16*E + E = 1,180,416,
  CLS E = 768, 12 * 7,087,104 = 85,045,248, fc_norm 2E = 1,536 -> 86,227,968 (the unused
  1000-class head, 769,000, is not part of the encoder).
  AST (DeiT-B/16 384 distilled) at MART's 128 x 100 input (12 x 9 grid): patch 16*16*E + E =
  197,376, CLS + DIST 1,536, positions (2 + 108) * E = 84,480, 12 * 7,087,872 = 85,054,464,
  final norm 1,536 -> 85,339,392.
  BERT-base uncased: word 30522 E = 23,440,896, positions 512 E = 393,216, token types 2E =
  1,536, embedding LN 1,536, 12 * 7,087,872 = 85,054,464, pooler E^2 + E = 590,592 ->
  109,482,240 (the well-known bert-base-uncased figure)."""
  video = jax.ShapeDtypeStruct((1, 16, 112, 112, 3), jnp.float32)
  fbank = jax.ShapeDtypeStruct((1, 100, 128), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  counts = {}
  for name, model, x, want in (("VideoMAE ViT-B/16 112px", VideoViT(), video, 86_227_968),
                               ("AST 12x9", AudioSpectrogramTransformer(), fbank, 85_339_392),
                               ("BERT-base", BertEncoder(), ids, 109_482_240)):
    shapes = jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x)
    counts[name] = count_params(shapes)
    print(f"{name}: {counts[name]:,} parameters")
    assert counts[name] == want, name
  v = jax.eval_shape(lambda a: VideoViT().init(jax.random.key(0), a), video)["params"]
  assert nn.meta.unbox(v)["encoder"]["layers"]["query"]["kernel"].shape == (12, 768, 12, 64)
  assert "bias" not in nn.meta.unbox(v)["encoder"]["layers"]["key"]
