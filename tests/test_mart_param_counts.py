"""Exact parameter counts: our MART (configs/mart_ve8.py:released, shapes only via
jax.eval_shape) against the PyTorch twin of the released modules at the release's sizes
(methods/mart/torch_reference.py, built on the meta device: no memory, no init cost).

What is counted: parameters only. The fixed sin-cos tables are constants on our side and
non-persistent buffers on theirs; BERT's position_ids / token_type_ids are buffers. The
released heads nothing reads (torch_reference.UNUSED_HEADS: VideoMAE's head, DeiT's head and
head_dist in AST, AST's AudioSet mlp_head, v_s_fc, a_s_fc) are not built by our MBT and are
subtracted. BERT's pooler is built on both sides (the release runs it and never reads its
output; our BertEncoder has pooler=True), so it stays in both totals; were ours built without
one, the check subtracts it from theirs. Run with -s to see the totals.
"""
import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect import method as method_lib

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from jaxaffect.methods.mart import torch_reference as tr  # noqa: E402  (needs torch)


def _groups(depth: int, fusion: int) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
  """Place -> (our param path prefixes under params/, the wrapper's state_dict key prefixes),
  with our config's depth and fusion layers: torch blocks beyond them belong nowhere and fail
  the coverage check by name."""
  first = depth - fusion
  blocks = lambda base, ids: tuple(f"vit.{base}.blocks.{i}." for i in ids)
  fused = range(first, depth)
  return {
      "video encoder": (("mbt/video/",), ("vit.vid_model.patch_embed.", "vit.vid_model.cls_token")
                        + blocks("vid_model", range(first))),
      "audio encoder": (("mbt/audio/",), tuple(f"vit.ast_model.v.{k}" for k in (
          "patch_embed.", "cls_token", "dist_token", "pos_embed")) + blocks("ast_model.v",
                                                                             range(first))),
      "video fusion blocks": (("mbt/fusion_layers/video/",), blocks("vid_model", fused)),
      "audio fusion blocks": (("mbt/fusion_layers/audio/",), blocks("ast_model.v", fused)),
      "bottleneck": (("mbt/bottleneck",), ("vit.bottleneck",)),
      "video fc_norm": (("mbt/video_fc_norm/",), ("vit.vid_model.fc_norm.",)),
      "audio norm": (("mbt/audio_norm/",), ("vit.ast_model.v.norm.",)),
      "emotion heads v_fc, a_fc": (("mbt/v_fc/", "mbt/a_fc/"), ("vit.v_fc.", "vit.a_fc.")),
      "text (BERT)": (("text/",), ("lan_model.bert.",)),
      "tacl": (("tacl/",), ("tacl.",)),
      "decoder": (("decoder/",), ("decoder_embd.", "decoder_blocks.", "decoder_norm.",
                                  "decoder_pred.")),
      "mask token": (("mask_token",), ("Vmask_token",)),
  }


@pytest.fixture(scope="module")
def torch_side():
  """The released-size twin: the MBT alone (best.ckpt's layout) and the stage-1 wrapper."""
  with torch.device("meta"):
    return tr.MBTRef(), tr.MARTRef(tr.MBTRef())


@pytest.fixture(scope="module")
def ours():
  """{path: size} of our params (flattened, '/'-joined) for the released config."""
  config = config_lib.load("configs/mart_ve8.py:released", lock=False)
  method = method_lib.get_method(config)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in method.example_batch(1).items()}
  params = nn.unbox(jax.eval_shape(method.init_variables, jax.random.key(0), batch)["params"])
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return config, {k: int(np.prod(v.shape)) for k, v in flat.items()}


def _in(key: str, prefixes) -> bool:
  return key.startswith(tuple(prefixes))


def test_released_sizes_are_the_releases(torch_side):
  """The twin's defaults are the release's (independent of our config)."""
  mbt, wrapper = torch_side
  assert mbt.vid_model.num_patches == 392 and mbt.first == 8
  assert tuple(mbt.ast_model.v.pos_embed.shape) == (1, 2 + 12 * 9, 768)
  assert tuple(mbt.bottleneck.shape) == (1, 32, 768)
  assert tuple(mbt.vid_model.head.weight.shape) == (1000, 768)
  assert tuple(mbt.ast_model.mlp_head[1].weight.shape) == (527, 768)
  assert wrapper.decoder_pred.out_features == 2 * 16 * 16 * 3
  assert len(wrapper.decoder_blocks) == 8 and wrapper.decoder_blocks[0].attn.num_heads == 16
  cfg = wrapper.lan_model.bert.config
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size,
          cfg.max_position_embeddings) == (30522, 768, 12, 3072, 512)
  # The tables are buffers that the state_dict (the checkpoint layout) does not hold.
  assert "vit.vid_model.pos_embed_w_cls" in dict(wrapper.named_buffers())
  assert not any("pos_embed_w_cls" in k or "decoder_pos_embed" in k
                 for k in wrapper.state_dict())


def test_totals(torch_side, ours):
  mbt, wrapper = torch_side
  _, sizes = ours
  unused = {p: tr.count(mbt, ()) - tr.count(mbt, (p,)) for p in tr.UNUSED_HEADS}
  assert all(unused.values()), unused  # every listed head exists
  torch_mbt, torch_mbt_used = tr.count(mbt), tr.count(mbt, tr.UNUSED_HEADS)
  assert torch_mbt - torch_mbt_used == sum(unused.values())
  ours_mbt = sum(v for k, v in sizes.items() if k.startswith("mbt/"))
  ours_total = sum(sizes.values())
  torch_total = tr.count(wrapper)
  torch_total_used = tr.count(wrapper, tuple("vit." + p for p in tr.UNUSED_HEADS))
  pooler = tr.count(wrapper.lan_model.bert.pooler)
  ours_pooler = any(k.startswith("text/pooler/") for k in sizes)
  expected_total = torch_total_used - (0 if ours_pooler else pooler)
  print("\nunused released heads:", ", ".join(f"{p.rstrip('.')} {n:,}" for p, n in unused.items()),
        f"(total {sum(unused.values()):,})")
  print(f"MBT: ours {ours_mbt:,}; released {torch_mbt:,} with the unused heads, "
        f"{torch_mbt_used:,} without")
  print(f"stage 1 (whole tree): ours {ours_total:,}; released wrapper {torch_total:,} with the "
        f"unused heads, {torch_total_used:,} without; BERT pooler {pooler:,} "
        f"({'counted on both sides' if ours_pooler else 'not built by ours: subtracted'})")
  assert ours_mbt == torch_mbt_used
  assert ours_total == expected_total


def test_every_place_matches(torch_side, ours):
  """Per place, so a mismatch names where; every parameter on each side is in one place."""
  _, wrapper = torch_side
  config, sizes = ours
  groups = _groups(int(config.model.num_layers), int(config.model.fusion_layers))
  theirs = {k: p.numel() for k, p in wrapper.named_parameters()}
  unused = tuple("vit." + p for p in tr.UNUSED_HEADS)
  for side, keys, col in (("ours", sizes, 0), ("torch", theirs, 1)):
    for k in keys:
      places = [g for g, v in groups.items() if _in(k, v[col])]
      assert len(places) == 1 or (side == "torch" and not places and _in(k, unused)), (
          side, k, places)
  bad = []
  for place, (mine, their) in groups.items():
    a = sum(v for k, v in sizes.items() if _in(k, mine))
    b = sum(v for k, v in theirs.items() if _in(k, their))
    print(f"{place:26s} ours {a:>12,}  released {b:>12,}")
    if a != b or a == 0:
      bad.append(f"{place}: ours {a:,}, released {b:,}")
  assert not bad, "; ".join(bad)
