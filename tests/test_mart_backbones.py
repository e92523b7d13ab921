"""`mart-backbones` (methods/mart/converters.py): the public VideoMAE (`encoder.` prefix, under
"model") and AST (`module.v.`, a longer position grid) files of torch_reference's twins at the
smoke config's sizes -> one init_from checkpoint; restored into a fresh init, the backbone
weights are the files' (qkv split, fusion layer, cropped positions), the rest the init."""
import jax
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect import converted_checkpoint as store
from jaxaffect.convert import __main__ as cli
from jaxaffect.convert.converters import unbox
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.mart import converters, hf_convert
from jaxaffect.methods.mart.encoders import ast_grid
from jaxaffect.methods.mart.method import Method

torch = pytest.importorskip("torch")
from jaxaffect.methods.mart import torch_reference as tr  # noqa: E402  (needs torch)

SMOKE = "configs/mart_ve8.py:smoke"
AST_FRAMES = 56  # the file's grid 12 x 5, larger in time than ours (12 x 2)


def _randomized(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(0.3 * torch.randn(p.shape, generator=g))
  return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  c = config_lib.load(SMOKE, [])
  m, d = c.model, c.dataset
  dims = (m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim)
  vid = _randomized(tr.VideoViT(*dims, m.patch_size, m.tubelet_size, d.snippet_len, d.crop_size),
                    1)
  ast = _randomized(tr.ASTModel(*dims, d.fbank_bins, AST_FRAMES), 2)
  # Public layouts: VideoMAE has no CLS token; AST under DataParallel's `module.`.
  vsd = {"encoder." + k: v for k, v in vid.state_dict().items() if k != "cls_token"}
  asd = {"module." + k: v for k, v in ast.state_dict().items()}
  tmp = tmp_path_factory.mktemp("backbones")
  torch.save({"model": vsd, "epoch": 3}, str(tmp / "videomae.pth"))
  torch.save(asd, str(tmp / "ast.pth"))
  np_v = {k: v.numpy() for k, v in vsd.items()}
  np_a = {k: v.numpy() for k, v in asd.items()}
  return c, tmp, np_v, np_a


def _fresh(c):
  method = Method(c)
  batch = {k: np.zeros(v.shape, v.dtype) for k, v in method.example_batch(1).items()}
  variables = unbox(dict(jax.jit(method.init_variables)(jax.random.key(c.seed), batch)))
  return jax.tree.map(np.asarray, variables["params"])


def test_cli_restores_backbones_over_init(files):
  c, tmp, vsd, asd = files
  out = str(tmp / "out")
  assert cli.main(["mart-backbones", "--config", SMOKE, "--videomae", str(tmp / "videomae.pth"),
                   "--ast", str(tmp / "ast.pth"), out]) == 0
  meta = store.read_meta(out)
  assert meta["converter"] == "mart-backbones" and meta["subtrees"] == ["params/mbt"]
  assert "params/mbt/video/cls_token" in meta["keep_init"]
  assert "not in the file" in meta["info"]["left_to_init"]["params/mbt/video/cls_token"]

  fresh = _fresh(c)
  params, _ = store.restore_converted(out, fresh, {})
  params = jax.tree.map(np.asarray, params)
  v, f = params["mbt"], fresh["mbt"]
  e, h = c.model.hidden_size, c.model.num_heads
  # Video block 0 (an encoder layer, scanned): the key third of VideoMAE's fused qkv.
  qkv = vsd["encoder.blocks.0.attn.qkv.weight"]
  np.testing.assert_array_equal(v["video"]["encoder"]["layers"]["key"]["kernel"][0],
                                qkv[e:2 * e].T.reshape(e, h, -1))
  np.testing.assert_array_equal(v["video"]["encoder"]["layers"]["query"]["bias"][0],
                                vsd["encoder.blocks.0.attn.q_bias"].reshape(h, -1))
  # The last block is fusion layer 0 of each stream.
  last = c.model.num_layers - 1
  np.testing.assert_array_equal(v["fusion_layers"]["video"]["mlp_in"]["kernel"][0],
                                vsd[f"encoder.blocks.{last}.mlp.fc1.weight"].T)
  np.testing.assert_array_equal(v["fusion_layers"]["audio"]["value"]["kernel"][0],
                                asd[f"module.v.blocks.{last}.attn.qkv.weight"][2 * e:].T
                                .reshape(e, h, -1))
  np.testing.assert_array_equal(v["video_fc_norm"]["scale"], vsd["encoder.fc_norm.weight"])
  # AST's positions: the file's 12 x 5 grid centre-cropped to ours.
  grid = ast_grid(c.dataset.fbank_bins, c.dataset.audio_frames)
  crop = hf_convert.crop_ast_positions(asd["module.v.pos_embed"],
                                       (grid[0], ast_grid(c.dataset.fbank_bins, AST_FRAMES)[1]),
                                       grid)
  assert crop.shape[1] == 2 + grid[0] * grid[1] < asd["module.v.pos_embed"].shape[1]
  np.testing.assert_array_equal(v["audio"]["pos_embed"], crop)
  assert not np.array_equal(v["audio"]["pos_embed"], f["audio"]["pos_embed"])
  # What no file holds keeps the init: CLS, bottleneck, heads, and the other subtrees.
  for name in ("bottleneck", "v_fc", "a_fc"):
    jax.tree.map(np.testing.assert_array_equal, v[name], f[name])
  np.testing.assert_array_equal(v["video"]["cls_token"], f["video"]["cls_token"])
  for name in ("text", "tacl", "decoder", "mask_token"):
    jax.tree.map(np.testing.assert_array_equal, params[name], fresh[name])


def test_missing_key_is_one_line(files):
  c, _, vsd, asd = files
  bad = {k: v for k, v in vsd.items() if k != "encoder.blocks.1.attn.v_bias"}
  with pytest.raises(ConversionError) as e:
    converters.mart_backbones(bad, asd, c, sources={"videomae": "vm.pth"})
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("vm.pth: missing key encoder.blocks.1.attn.v_bias (for params/")
  # A misshapen AST tensor: one line naming the file's key.
  bad = dict(asd, **{"module.v.norm.weight": np.ones(3, np.float32)})
  with pytest.raises(ConversionError) as e:
    converters.mart_backbones(vsd, bad, c, sources={"ast": "ast.pth"})
  msg = str(e.value)
  assert "\n" not in msg and "ast.pth" in msg and "module.v.norm.weight" in msg


def test_cli_with_bert_directory_restores_the_text_encoder(files, tmp_path):
  """--bert DIR (a transformers save_pretrained folder, model.safetensors) fills params/text
  with hf_convert.bert's mapping of that file; without --bert the text stays the init."""
  transformers = pytest.importorskip("transformers")
  from jaxaffect.methods.mart.encoders import BertEncoder
  c, tmp, _, _ = files
  t, e = c.model.text, c.model.hidden_size
  cfg = transformers.BertConfig(vocab_size=t.vocab_size, hidden_size=e,
                                num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                                intermediate_size=t.mlp_dim, max_position_embeddings=t.max_positions,
                                type_vocab_size=2)
  torch.manual_seed(5)
  bert = _randomized(transformers.BertModel(cfg), 6)
  bert_dir = tmp_path / "bert"
  bert.save_pretrained(str(bert_dir), safe_serialization=True)
  assert (bert_dir / "model.safetensors").exists()
  out = str(tmp_path / "out")
  assert cli.main(["mart-backbones", "--config", SMOKE, "--videomae", str(tmp / "videomae.pth"),
                   "--ast", str(tmp / "ast.pth"), "--bert", str(bert_dir), out]) == 0
  meta = store.read_meta(out)
  assert meta["subtrees"] == ["params/mbt", "params/text"]
  assert "params/text" not in meta["info"]["not_covered_keep_init"]

  fresh = _fresh(c)
  params, _ = store.restore_converted(out, fresh, {})
  sd = {k: v.numpy() for k, v in bert.state_dict().items()}
  want = hf_convert.bert(sd, BertEncoder(
      vocab_size=t.vocab_size, hidden_size=e, num_layers=t.num_layers, num_heads=t.num_heads,
      mlp_dim=t.mlp_dim, max_positions=t.max_positions)).variables["params"]
  got = jax.tree.map(np.asarray, params["text"])
  jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, want))
  assert not np.array_equal(jax.tree.leaves(got)[0], jax.tree.leaves(fresh["text"])[0])
