"""PyTorch twin of MART's released modules (nku-zhichengzhang/MART: models/mbt/MBT.py,
models/mbt/VanillaViT.py, models/ast/ast_models.py over timm 0.4.5's distilled DeiT, MART.py),
written from their semantics with the released module names, so that `state_dict()` has the
keys of the released checkpoints: `MBTRef` those of `best.ckpt`, `MARTRef` those of the stage-1
wrapper (`vit.` + lan_model.bert, tacl, decoder_*, Vmask_token). For the converter, stage-1
and TACL parity tests and the parameter-count check; imports torch (and, for `MARTRef`,
transformers): the test extras, so the library never imports this module. It defines no
`versus` hooks (versus_batch / versus_reference) yet.

Every size is a constructor argument; the defaults are the release's (ViT-B at 112 px and 16
frames, AST on 100-frame x 128-bin fbank segments, 32 bottleneck tokens in the last 4 blocks,
BERT-base, a 512-wide decoder of 8 blocks). As released, the modules hold parameters that no
loss reads and the port does not build: `UNUSED_HEADS` (VideoMAE's head, DeiT's head and
head_dist inside AST, AST's AudioSet mlp_head, the v_s_fc / a_s_fc sentiment heads). BERT's
pooler runs, but its output (TACL's fl_s) is never read either.

The fixed sin-cos tables are non-persistent buffers: the release keeps them as plain tensors,
so they are neither parameters nor state_dict entries. Inputs as released: video
[B, Ns, 3, T, H, W] in 0-255, fbank [B, Ns * Ta, M]; clips are flattened segment-major (row
s * B + b), the release's video order (its text batch is b-major; the two agree at its batch
size of 1).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Key prefixes (of an MBTRef state_dict) of the released parameters that nothing reads.
UNUSED_HEADS = ("vid_model.head.", "ast_model.v.head.", "ast_model.v.head_dist.",
                "ast_model.mlp_head.", "v_s_fc.", "a_s_fc.")


def sinusoid_table(n: int, d: int) -> torch.Tensor:
  """VideoMAE's fixed table [1, n, d]: angle pos / 10000^(2 (j // 2) / d), sin on the even
  columns, cos on the odd ones (computed in float64, stored as float32)."""
  j = np.arange(d)
  angle = np.arange(n, dtype=np.float64)[:, None] / np.power(10000, 2 * (j // 2) / d)[None]
  angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
  return torch.from_numpy(angle.astype(np.float32))[None]


def count(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
  """Parameter elements of `module`, without those whose name starts with a prefix in `skip`
  (works on the meta device: only shapes are read)."""
  return sum(p.numel() for k, p in module.named_parameters() if not k.startswith(skip))


# ---- timm-style transformer parts ------------------------------------------------------------

class Attention(nn.Module):
  """timm's fused-qkv self-attention. qv_bias (VideoMAE): the qkv Linear has no bias; learned
  q_bias and v_bias are used with the key's bias fixed at zero. Otherwise (DeiT) a qkv bias.
  forward -> (output, softmax weights [N, heads, T, T])."""

  def __init__(self, dim: int, num_heads: int, qv_bias: bool):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=not qv_bias)
    if qv_bias:
      self.q_bias = nn.Parameter(torch.zeros(dim))
      self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    n, t, c = x.shape
    bias = self.qkv.bias
    if bias is None:
      bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias).reshape(n, t, 3, self.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    w = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((w @ v).transpose(1, 2).reshape(n, t, c)), w


class Mlp(nn.Module):
  """timm's Mlp: fc2(GELU(fc1(x))), exact GELU; hidden and output widths default to the input's."""

  def __init__(self, dim: int, hidden: int | None = None, out: int | None = None):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden or dim)
    self.fc2 = nn.Linear(hidden or dim, out or dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
  """timm Block, pre-LN: x + attn(norm1(x)), then x + mlp(norm2(x)) (no layer scale, no
  drop-path: the release's rates are 0)."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, qv_bias: bool, eps: float = 1e-6):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads, qv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, mlp_dim)

  def forward(self, x, return_attention: bool = False):
    y, w = self.attn(self.norm1(x))
    x = x + y
    x = x + self.mlp(self.norm2(x))
    return (x, w) if return_attention else x


class PatchEmbed(nn.Module):
  """Holds the patch convolution as `proj` (the released key is patch_embed.proj.*)."""

  def __init__(self, proj: nn.Module):
    super().__init__()
    self.proj = proj

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)  # [N, E, ...] -> [N, patches, E]


# ---- the two encoders ------------------------------------------------------------------------

class VideoViT(nn.Module):
  """VideoMAE's VisionTransformer as `vit_base_patch16_112` builds it: tubelet Conv3d, blocks
  with q/v biases (LayerNorm eps 1e-6), `norm` the identity and `fc_norm` (mean-pooling
  variant), the unused `head`, and the CLS token MART copies from DeiT. The table has one row
  more than the patches: MART prepends the CLS token (row 0)."""

  def __init__(self, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16,
               tubelet_size=2, num_frames=16, img_size=112, in_chans=3, num_classes=1000):
    super().__init__()
    t, p = tubelet_size, patch_size
    self.patch_embed = PatchEmbed(nn.Conv3d(in_chans, embed_dim, (t, p, p), stride=(t, p, p)))
    self.num_patches = (num_frames // t) * (img_size // p) ** 2
    self.register_buffer("pos_embed_w_cls", sinusoid_table(self.num_patches + 1, embed_dim),
                         persistent=False)
    self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_dim, qv_bias=True)
                                for _ in range(depth))
    self.norm = nn.Identity()
    self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

  def forward_features_fore_cls(self, clips, depth: int):
    """clips [N, C, T, H, W] (normalised) -> tokens [N, 1 + patches, E] after blocks[:depth]."""
    x = self.patch_embed(clips)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = x + self.pos_embed_w_cls.to(x)
    for blk in self.blocks[:depth]:
      x = blk(x)
    return x


def ast_grid(num_mel_bins: int, frames: int, patch: int = 16, fstride: int = 10,
             tstride: int = 10) -> tuple[int, int]:
  return (num_mel_bins - patch) // fstride + 1, (frames - patch) // tstride + 1


class DistilledViT(nn.Module):
  """timm 0.4.5's DistilledVisionTransformer inside AST (`ast_model.v`): CLS and DIST tokens, a
  learned table (2 + grid rows, already cropped to the segment's grid), the 1-channel
  Conv2d(16, stride (10, 10)) patches that AST substitutes, blocks with a qkv bias (eps 1e-6),
  `norm`, and DeiT's ImageNet `head` and `head_dist` (unused)."""

  def __init__(self, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, grid=(12, 9),
               patch_size=16, fstride=10, tstride=10, num_classes=1000):
    super().__init__()
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 2 + grid[0] * grid[1], embed_dim))
    self.patch_embed = PatchEmbed(nn.Conv2d(1, embed_dim, patch_size, stride=(fstride, tstride)))
    self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_dim, qv_bias=False)
                                for _ in range(depth))
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)
    self.head_dist = nn.Linear(embed_dim, num_classes)


class ASTModel(nn.Module):
  """AST (AudioSet checkpoint layout): `v` (the DeiT) and the unused AudioSet `mlp_head`
  (LayerNorm with PyTorch's eps, Linear to 527 labels)."""

  def __init__(self, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, num_mel_bins=128,
               audio_frames=100, patch_size=16, fstride=10, tstride=10, deit_classes=1000,
               label_dim=527):
    super().__init__()
    grid = ast_grid(num_mel_bins, audio_frames, patch_size, fstride, tstride)
    self.v = DistilledViT(embed_dim, depth, num_heads, mlp_dim, grid, patch_size, fstride,
                          tstride, deit_classes)
    self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, label_dim))

  def forward_fea(self, fbank, depth: int):
    """fbank [N, Ta, M] -> tokens [N, 2 + grid, E] after blocks[:depth]; the patches cut the
    transposed [M, Ta] plane (frequency-major tokens)."""
    x = self.v.patch_embed(fbank.unsqueeze(1).transpose(2, 3))
    n = x.shape[0]
    x = torch.cat([self.v.cls_token.expand(n, -1, -1), self.v.dist_token.expand(n, -1, -1), x],
                  1) + self.v.pos_embed
    for blk in self.v.blocks[:depth]:
      x = blk(x)
    return x


# ---- MBT -------------------------------------------------------------------------------------

class MBTRef(nn.Module):
  """models/mbt/MBT.py: the ViT and AST run their first depth - fusion_layers blocks alone,
  then each of the last blocks sees [stream ; bottleneck] (the audio block first) and the new
  bottleneck is the mean of the two updated copies. Heads a_fc / v_fc (used) and a_s_fc /
  v_s_fc (never read)."""
  NORM_VALUE = 255.0
  MEAN = 100.0 / 255.0

  def __init__(self, n_classes=8, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072,
               fusion_layers=4, bottleneck_tokens=32, patch_size=16, tubelet_size=2,
               num_frames=16, img_size=112, num_mel_bins=128, audio_time=100, senti_class=2):
    super().__init__()
    self.n_classes, self.audio_time = n_classes, audio_time
    self.first = depth - fusion_layers
    self.ast_model = ASTModel(embed_dim, depth, num_heads, mlp_dim, num_mel_bins, audio_time)
    self.vid_model = VideoViT(embed_dim, depth, num_heads, mlp_dim, patch_size, tubelet_size,
                              num_frames, img_size)
    self.a_fc = nn.Linear(embed_dim, n_classes)
    self.v_fc = nn.Linear(embed_dim, n_classes)
    self.a_s_fc = nn.Linear(embed_dim, senti_class)
    self.v_s_fc = nn.Linear(embed_dim, senti_class)
    self.bottleneck = nn.Parameter(torch.zeros(1, bottleneck_tokens, embed_dim))

  def clips(self, visual, audio):
    """(video tokens [Ns * B, 1 + Nv, E], audio tokens [Ns * B, 2 + Na, E], Ns, B) after the
    unfused blocks; clips segment-major. AST's part runs under no_grad, as released."""
    visual = visual.transpose(0, 1) / self.NORM_VALUE - self.MEAN  # [Ns, B, C, T, H, W]
    ns, b = visual.shape[:2]
    x = self.vid_model.forward_features_fore_cls(visual.flatten(0, 1), self.first)
    chunks = audio.transpose(0, 1).chunk(audio.shape[1] // self.audio_time, dim=0)
    fbank = torch.stack(chunks).transpose(1, 2).flatten(0, 1)  # [Ns * B, Ta, M]
    with torch.no_grad():
      y = self.ast_model.forward_fea(fbank, self.first)
    return x, y, ns, b

  def bottleneck_fusion(self, x, y):
    """The fused blocks -> (video tokens (VideoMAE's `norm` is the identity), audio tokens after
    AST's `norm`, the last video block's attention over the video keys [N, H, Tv, Tv])."""
    tv, ta = x.shape[1], y.shape[1]
    bott = self.bottleneck.repeat(x.shape[0], 1, 1)
    for v_blk, a_blk in zip(self.vid_model.blocks[self.first:],
                            self.ast_model.v.blocks[self.first:]):
      ab = a_blk(torch.cat([y, bott], 1))
      vb, w = v_blk(torch.cat([x, bott], 1), return_attention=True)
      y, x = ab[:, :ta], vb[:, :tv]
      bott = (ab[:, ta:] + vb[:, tv:]) / 2
    return self.vid_model.norm(x), self.ast_model.v.norm(y), w[:, :, :tv, :tv]

  def segment_mean(self, f, ns, b):
    """[Ns * B, D] (segment-major) -> [B, D], the mean over each video's segments."""
    return f.view(ns, b, -1).transpose(0, 1).mean(dim=1)

  def forward_bottleneck_cls(self, visual, audio):
    """-> (output_a, output_v) [B, C]: the heads on the segment means of AST's normed CLS/DIST
    mean and of fc_norm(video CLS); plus the intra map [Ns * B, Nv] (the last video block's
    CLS -> patch attention, mean over heads) that MART.py reads from the same block. The
    release's no-grad per-segment score is left out."""
    x, y, ns, b = self.clips(visual, audio)
    fv, fa, w = self.bottleneck_fusion(x, y)
    intra = w[:, :, :1, 1:].mean(dim=1).mean(dim=1)
    fa = fa[:, :2].mean(dim=1)
    fv = self.vid_model.fc_norm(fv[:, :1]).mean(dim=1)
    return (self.a_fc(self.segment_mean(fa, ns, b)), self.v_fc(self.segment_mean(fv, ns, b)),
            intra)

  forward = forward_bottleneck_cls


# ---- TACL (MART.py) --------------------------------------------------------------------------

class CrossAttention(nn.Module):
  """MultiHeadAttentionOp: linear + ReLU on q, k and v; heads split head-major into the batch;
  softmax(q k^T / sqrt(d)); heads merged; linear + ReLU. -> (out, weights [B * heads, Lq, Lk])."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.linear_q, self.linear_k, self.linear_v, self.linear_o = (
        nn.Linear(dim, dim) for _ in range(4))

  def forward(self, q, kv):
    q, k, v = F.relu(self.linear_q(q)), F.relu(self.linear_k(kv)), F.relu(self.linear_v(kv))
    b, lq, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], self.heads, d // self.heads).permute(
        0, 2, 1, 3).reshape(b * self.heads, t.shape[1], d // self.heads)
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(1, 2) / (d // self.heads) ** 0.5, dim=-1)
    y = (w @ v).reshape(b, self.heads, lq, -1).permute(0, 2, 1, 3).reshape(b, lq, d)
    return F.relu(self.linear_o(y)), w


class CPC(nn.Module):
  """MMIM's CPC: `net` = num_layers x (Conv1d k=3 pad=1, ReLU) along the word axis (y_size ->
  x_size in the last); the score mean(<x, x_hat> - logsumexp_j <x, x_hat_j>) over all
  flattened (clip, word) rows, L2-normalised (MART adds it, without MMIM's minus)."""

  def __init__(self, x_size: int, y_size: int, num_layers: int = 4):
    super().__init__()
    layers = []
    for i in range(num_layers):
      layers += [nn.Conv1d(y_size, x_size if i == num_layers - 1 else y_size, 3, padding=1),
                 nn.ReLU()]
    self.net = nn.Sequential(*layers)

  def predict(self, y):
    return self.net(y.permute(0, 2, 1)).permute(0, 2, 1)

  def forward(self, x, y):
    pred = self.predict(y).flatten(0, 1)
    x = x.flatten(0, 1)
    pred = pred / pred.norm(dim=-1, keepdim=True)
    x = x / x.norm(dim=-1, keepdim=True)
    return ((x * pred).sum(-1) - torch.logsumexp(x @ pred.t(), dim=-1)).mean()


class TACLRef(nn.Module):
  """TemporalAffectiveComplementaryLearning (the release fixes the CPC width at 768; here it
  is `dim`). DropPath (rate drop_path, train mode only) has no parameters; `streams` takes
  explicit per-clip factors in its place so a test can pin the draw."""

  def __init__(self, dim: int = 768, n_classes: int = 8, heads: int = 8,
               drop_path: float = 0.01, cpc_layers: int = 4):
    super().__init__()
    self.heads, self.drop_path = heads, drop_path
    self.v2l_attn, self.a2l_attn = CrossAttention(dim, heads), CrossAttention(dim, heads)
    self.v_norm, self.a_norm, self.l_norm = (nn.LayerNorm(dim) for _ in range(3))
    self.v_proj, self.a_proj = Mlp(dim), Mlp(dim)
    self.v2a_contrast = CPC(dim, dim, cpc_layers)
    self.a2v_contrast = CPC(dim, dim, cpc_layers)
    self.v_fc, self.a_fc = Mlp(dim, out=n_classes), Mlp(dim, out=n_classes)

  def streams(self, fv, fa, fl, drop_v=1.0, drop_a=1.0):
    """Per clip, before pooling; drop_* (e.g. [B*Ns, 1, 1]) stand in for DropPath's factor."""
    fl = self.l_norm(fl)
    v, v_att = self.v2l_attn(fl, self.v_norm(fv))
    a, _ = self.a2l_attn(fl, self.a_norm(fa))
    v2l, a2l = self.v_proj(v * drop_v), self.a_proj(a * drop_a)
    vatt = v_att.reshape(-1, self.heads, *v_att.shape[1:]).mean(1)  # [B*Ns, L, Nv]
    return dict(v2l=v2l, a2l=a2l, v2l_hat=self.v2a_contrast.predict(a2l),
                a2l_hat=self.a2v_contrast.predict(v2l), vatt=vatt, v_pre=v, a_pre=a)

  def forward(self, fv, fa, fl, ns):
    """fv [B*Ns, Nv, E], fa [B*Ns, Na, E], fl [B*Ns, L, E] (b-major rows) -> the streams plus
    logits_v / logits_a [B, C] (words, then segments averaged), inter_attention [B*Ns, Nv]
    (heads, then words averaged) and comp (the summed CPC scores)."""
    s = self.streams(fv, fa, fl)
    comp = self.v2a_contrast(s["v2l"], s["a2l"]) + self.a2v_contrast(s["a2l"], s["v2l"])
    pool = lambda t: t.reshape(-1, ns, *t.shape[1:]).mean(1).mean(1)  # '(b s) n d', s, then n
    return dict(s, logits_v=self.v_fc(pool(s["v2l"])), logits_a=self.a_fc(pool(s["a2l"])),
                inter_attention=s["vatt"].mean(1), comp=comp)


# ---- the stage-1 wrapper (MART.py) -----------------------------------------------------------

def bert_base_config(**overrides):
  """transformers.BertConfig with bert-base-uncased's sizes (its defaults), `overrides` applied."""
  import transformers  # test extra: only the stage-1 wrapper needs it
  return transformers.BertConfig(**overrides)


class LanModel(nn.Module):
  """models/text.py's BERT_MODEL: `bert` (a transformers BertModel, pooler included)."""

  def __init__(self, config):
    super().__init__()
    import transformers  # test extra: only the stage-1 wrapper needs it
    self.bert = transformers.BertModel(config)

  def forward(self, ids):
    """No attention mask, as released: padded words are attended to."""
    out = self.bert(ids)
    return {"embeddings": out["last_hidden_state"], "cls": out["pooler_output"]}


class MARTRef(nn.Module):
  """MART.py's MART: vit (MBTRef), lan_model (BERT), tacl (TACLRef), the decoder
  (decoder_embd, + fixed sin-cos table, decoder_blocks: Blocks with q/v bias and PyTorch's
  LayerNorm eps 1e-5, decoder_norm, decoder_pred) and Vmask_token. The table's rows are the
  video patches (392 in the release), the prediction one tubelet's pixels (2 x 16 x 16 x 3)."""

  def __init__(self, vit: MBTRef, bert_config=None, tacl_heads=8, tacl_drop_path=0.01,
               decoder_emb=512, decoder_depth=8, decoder_heads=16, decoder_mlp=2048):
    super().__init__()
    embed = vit.bottleneck.shape[-1]
    proj = vit.vid_model.patch_embed.proj
    num_patches = vit.vid_model.num_patches
    self.vit = vit
    self.lan_model = LanModel(bert_config if bert_config is not None else bert_base_config())
    self.tacl = TACLRef(embed, vit.n_classes, tacl_heads, tacl_drop_path)
    self.decoder_embd = nn.Linear(embed, decoder_emb)
    self.decoder_pred = nn.Linear(decoder_emb, int(np.prod(proj.kernel_size)) * proj.in_channels)
    self.decoder_blocks = nn.ModuleList(
        Block(decoder_emb, decoder_heads, decoder_mlp, qv_bias=True, eps=1e-5)
        for _ in range(decoder_depth))
    self.Vmask_token = nn.Parameter(torch.zeros(1, 1, embed))
    self.register_buffer("decoder_pos_embed", sinusoid_table(num_patches, decoder_emb),
                         persistent=False)
    self.decoder_norm = nn.LayerNorm(decoder_emb)

  def forward_d(self, tokens):
    """The decoder: patch tokens [N, Nv, E] -> per-tubelet predictions [N, Nv, pixels]."""
    x = self.decoder_embd(tokens) + self.decoder_pos_embed.to(tokens)
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))

  def forward_d_att(self, patches, mask):
    """Masked tokens (mask [N, Nv] bool) replaced by Vmask_token, then the decoder. The release
    draws the mask with AttMask inside; here it is an input, so both sides can share one."""
    w = mask.unsqueeze(-1).to(patches)
    return self.forward_d(patches * (1 - w) + self.Vmask_token * w)

  def forward_c(self, fv_c, fa_c, ns, b):
    """MBT's heads on the segment means of the RAW video CLS and the normed audio CLS/DIST."""
    return (self.vit.a_fc(self.vit.segment_mean(fa_c.mean(dim=1), ns, b)),
            self.vit.v_fc(self.vit.segment_mean(fv_c.mean(dim=1), ns, b)))

  def forward(self, visual, audio, ids, mask, lamb=0.9):
    """Stage 1 without the losses: -> TACL's outputs (its heads: logits_v / logits_a), intra
    [N, Nv], score (lamb * intra + (1 - lamb) * inter, AttMask's input), output_a / output_v
    [B, C] (the MBT heads, forward_c) and the reconstruction [N, Nv, pixels] under `mask`."""
    x, y, ns, b = self.vit.clips(visual, audio)
    fv, fa, w = self.vit.bottleneck_fusion(x, y)
    fl = self.lan_model(ids)["embeddings"]
    intra = w[:, :, :1, 1:].mean(dim=1).mean(dim=1)
    out = self.tacl(fv[:, 1:], fa[:, 2:], fl, ns)
    output_a, output_v = self.forward_c(fv[:, :1], fa[:, :2], ns, b)
    return dict(out, intra=intra, score=lamb * intra + (1 - lamb) * out["inter_attention"],
                output_a=output_a, output_v=output_v,
                reconstruction=self.forward_d_att(fv[:, 1:], mask))
