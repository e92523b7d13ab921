"""BPM-GCN (Zhai, Jia et al., IEEE TAFFC 2024): bilateral posture/movement graph convolution for
gait emotion recognition, as the released code (exped1230/BPM-GCN,
model/agcn_diff_combine_score_fagg.py; fusion "none" = agcn_diff_combine_score.py) builds it.

Layout is channels-last: skeleton [B, T, V=16, 3] -> posture x_p [B, T, V, 3] and movement
x_m [B, T, V, 8] (velocity, |v|, acceleration, |a|, computed here; see gait_features).
Each stream: data_bn over (V, C) features, then 10 2s-AGCN blocks (64x4, 128x3, 256x3 channels,
temporal stride 2 at blocks 5 and 8) on the Emotion-Gait graph; PM-Interacted fusion after
blocks 4, 7, 10; global pooling over T x V; heads fc1_classifier_p / fc1_classifier_m (256 -> 4)
and fc2_aff (256 -> 31*T, the per-frame affective features, frame-major).

Block (TCN_GCN_unit): y = relu(tcn1(gcn1(x)) + residual(x)).
  gcn1: sum_k conv_d_k(x aggregated over joints by A_k + PA_k + C_k(x)) -> bn (gamma init 1e-6)
        + down(x) -> relu, with C_k = softmax over the source joint of
        (conv_a_k(x) . conv_b_k(x)) / (inter*T), inter = C_out/4.
  tcn1: 9x1 conv (stride s) + bn.

Param tree, named after the PyTorch keys (Flax "name_i" <-> PyTorch "name.i"):
  data_bn_p, data_bn_m                                  BatchNorm1d(V*C), features ordered (v, c)
  l{1..10}_{p,m}/gcn1/{PA [3,V,V], conv_a_k, conv_b_k, conv_d_k, down_0 (conv), down_1 (bn), bn}
  l{1..10}_{p,m}/tcn1/{conv, bn}    l{5,8}_{p,m}/residual/{conv, bn}
  fusion{1,2,3}/att_{T,N}_{p,m}/{fc1, fc2}                 bias-free 1x1 convs (T->T or V->V)
  fc1_classifier_p, fc1_classifier_m, fc2_aff               Dense
Conv kernels are [kh, kw, in, out] (PyTorch [out, in, kh, kw]); the fixed graph A is a constant.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.methods.bpmgcn import gait_features
from jaxaffect.nn.layers import (BatchNorm, Conv, Initializer, dense,
                                 kaiming_normal_fan_out, materialized,
                                 torch_default_bias_init, torch_default_kernel_init)

Array = jax.Array

FUSIONS = ("code", "paper", "none")
POOLINGS = ("mean", "max")
STREAMS = ("both", "posture", "movement")
CHANNELS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)
FUSION_AFTER = {4: "fusion1", 7: "fusion2", 10: "fusion3"}

# Emotion-Gait bones as (child, parent) pairs, the "inward" direction of 2s-AGCN's graph.
EGAIT_INWARD = ((9, 8), (8, 7), (7, 2), (3, 2), (4, 2), (5, 4), (6, 5), (2, 1), (1, 0), (13, 0),
                (10, 0), (15, 14), (14, 13), (12, 11), (11, 10))


def egait_adjacency(num_joints: int = 16) -> np.ndarray:
  """float32 [3, V, V]: identity, inward, outward; A[k, src, dst], columns normalised to sum 1.

  Aggregation is y[dst] = sum_src x[src] A[src, dst]: inward averages each joint's parent,
  outward its children (2s-AGCN's spatial partition, not ST-GCN's distance partition)."""

  def directed(pairs):
    a = np.zeros((num_joints, num_joints))
    for i, j in pairs:
      a[j, i] = 1.0
    col = a.sum(0)
    return a / np.where(col > 0, col, 1.0)[None, :]

  outward = tuple((j, i) for i, j in EGAIT_INWARD)
  return np.stack([np.eye(num_joints), directed(EGAIT_INWARD),
                   directed(outward)]).astype(np.float32)


def _normal(std: float) -> Initializer:
  return nn.initializers.normal(stddev=std)


class PointConv(nn.Module):
  """1x1 conv on [..., C] with a [1, 1, in, out] kernel (PyTorch Conv2d(k=1) layout)."""
  features: int
  use_bias: bool = True
  kernel_init: Initializer = kaiming_normal_fan_out
  bias_init: Initializer = nn.initializers.zeros_init()
  kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "conv_out")
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                   (1, 1, x.shape[-1], self.features), jnp.float32)
    b = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
    x, k, b = nn.dtypes.promote_dtype(x, k, b, dtype=self.dtype)
    y = jnp.einsum("...c,cd->...d", x, k[0, 0])
    return y + b if b is not None else y


class TemporalUnit(nn.Module):
  """unit_tcn: (kernel x 1) conv along T (padding (k-1)/2, stride s, bias) + BatchNorm."""
  features: int
  kernel_size: int = 9
  stride: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    cin = x.shape[-1]
    x = Conv(self.features, (self.kernel_size, 1), (self.stride, 1),
             ((self.kernel_size - 1) // 2, 0), dtype=self.dtype,
             kernel_axes=(None, None, "conv_in" if cin >= 16 else None, "conv_out"),
             name="conv")(x)
    return BatchNorm(dtype=self.dtype, name="bn")(x, use_running_average=not train)


class ConvParams(nn.Module):
  """The variables of a 1x1 conv (kernel [1, 1, in, out], bias), returned, not applied, so a
  caller can batch several convs into one matmul while keeping the PyTorch module names."""
  in_features: int
  features: int
  kernel_init: Initializer = kaiming_normal_fan_out
  kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "conv_out")

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    k = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                   (1, 1, self.in_features, self.features), jnp.float32)
    return k[0, 0], self.param("bias", nn.initializers.zeros_init(), (self.features,))


class AdaptiveGraphConv(nn.Module):
  """unit_gcn: 2s-AGCN spatial unit with the fixed graph A, learned PA and data-dependent C.

  The K subsets' conv_a/conv_b/conv_d run as single batched matmuls (same maths as the K
  separate branches of the original; fewer ops to compile)."""
  features: int
  adjacency: Any  # numpy [K, V, V]
  coff_embedding: int = 4
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    b, t, v, cin = x.shape
    a_fixed = jnp.asarray(self.adjacency, jnp.float32)
    k_sub = a_fixed.shape[0]
    inter = self.features // self.coff_embedding
    pa = self.param("PA", nn.initializers.constant(1e-6), a_fixed.shape, jnp.float32)
    axes = (None, None, "conv_in" if cin >= 16 else None, "conv_out")
    branch_init = _normal(math.sqrt(2.0 / (self.features * cin * k_sub)))

    def stacked(name, n, init=kaiming_normal_fan_out):
      ws = [ConvParams(cin, n, init, axes, name=f"{name}_{k}")() for k in range(k_sub)]
      return jnp.stack([w for w, _ in ws]), jnp.stack([b_ for _, b_ in ws])  # [K,cin,n], [K,n]

    wa, ba = stacked("conv_a", inter)
    wb, bb = stacked("conv_b", inter)
    wd, bd = stacked("conv_d", self.features, branch_init)
    x, wa, ba, wb, bb, wd, bd = nn.dtypes.promote_dtype(x, wa, ba, wb, bb, wd, bd,
                                                        dtype=self.dtype)
    fa = jnp.einsum("btvc,kci->bktvi", x, wa) + ba[None, :, None, None, :]
    fb = jnp.einsum("btvc,kci->bktvi", x, wb) + bb[None, :, None, None, :]
    logits = jnp.einsum("bktvi,bktwi->bkvw", fa, fb).astype(jnp.float32) / (inter * t)
    adj = jax.nn.softmax(logits, axis=-2) + (a_fixed + pa)[None]   # [B, K, V(src), V(dst)]
    # Aggregation as one small matmul per frame, [w, (k, v)] @ [v, c], with the adjacency
    # broadcast over t: the result [b, t, w, k, c] feeds the channel matmul over (k, c) with no
    # transpose of the activations (the "bktwc" form cost XLA:CPU a transpose per block).
    a = jnp.broadcast_to(jnp.transpose(adj, (0, 3, 1, 2))[:, None], (b, t, v, k_sub, v))
    agg = jnp.einsum("btwkv,btvc->btwkc", a.astype(x.dtype), x)
    # One [B*T*V, K*C] @ [K*C, D] matmul. Written as an einsum contracting (k, c), XLA:CPU
    # ordered the contraction (c, k) and transposed the activations to match: a full pass
    # over agg per block (64 channels: 30 -> 10 ms for this product alone).
    y = (agg.reshape(b * t * v, k_sub * cin) @ wd.reshape(k_sub * cin, -1)).reshape(
        b, t, v, -1) + jnp.sum(bd, 0)
    y = BatchNorm(scale_init=nn.initializers.constant(1e-6), dtype=self.dtype,
                  name="bn")(y, use_running_average=not train)
    if cin != self.features:
      d = PointConv(self.features, kernel_axes=axes, dtype=self.dtype, name="down_0")(x)
      d = BatchNorm(dtype=self.dtype, name="down_1")(d, use_running_average=not train)
    else:
      d = x
    return nn.relu(y + d)


class GCNBlock(nn.Module):
  """TCN_GCN_unit: relu(tcn1(gcn1(x)) + residual(x)); no residual in block 1."""
  features: int
  adjacency: Any
  stride: int = 1
  residual: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = AdaptiveGraphConv(self.features, self.adjacency, dtype=self.dtype, name="gcn1")(x, train)
    y = TemporalUnit(self.features, 9, self.stride, dtype=self.dtype, name="tcn1")(y, train)
    # The block output is stored once (`materialized`): the next block's 1x1 weight gradients
    # transpose it, and XLA:CPU would otherwise recompute this ReLU chain in each transpose.
    if self.residual:
      if x.shape[-1] != self.features or self.stride != 1:
        x = TemporalUnit(self.features, 1, self.stride, dtype=self.dtype, name="residual")(
            x, train)
      y = y + x
    return materialized(nn.relu(y))


class AxisAttention(nn.Module):
  """ChannelAttention of the code applied to one axis: sigmoid(fc2(relu(fc1(mean over the
  other axes)))), fc1/fc2 bias-free n -> n 1x1 convs (no bottleneck; `ratio` is unused)."""
  axis: int  # 1 = frames (T_att), 2 = joints (N_att) of [B, T, V, C]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    other = tuple(a for a in (1, 2, 3) if a != self.axis)
    s = jnp.mean(x.astype(jnp.float32), axis=other)            # [B, n]
    s = PointConv(s.shape[-1], use_bias=False, kernel_init=torch_default_kernel_init,
                  kernel_axes=(None, None, None, None), name="fc1")(s)
    s = PointConv(s.shape[-1], use_bias=False, kernel_init=torch_default_kernel_init,
                  kernel_axes=(None, None, None, None), name="fc2")(nn.relu(s))
    s = jax.nn.sigmoid(s)
    shape = [s.shape[0], 1, 1, 1]
    shape[self.axis] = s.shape[-1]
    return s.reshape(shape).astype(x.dtype)


class PMFusion(nn.Module):
  """PM-Interacted fusion between the posture (p) and movement (m) maps [B, T, V, C].

  "code" (released forward): t = T_att(x * N_att(x)) (node attention first, cascaded);
    x_p' = x_p + x_m * t_m;  x_m' = x_m + x_p' * t_p  (uses the already-updated x_p').
  "paper" (eqs. 8-11): t, n from x independently; both streams updated from the old maps:
    x_p' = x_p + x_m * t_m * n_m;  x_m' = x_m + x_p * t_p * n_p.
  Same parameters either way."""
  mode: str = "code"

  @nn.compact
  def __call__(self, x_p: Array, x_m: Array) -> tuple[Array, Array]:
    att = {f"{a}_{s}": AxisAttention(1 if a == "T" else 2, name=f"att_{a}_{s}")
           for a in ("T", "N") for s in ("p", "m")}
    if self.mode == "code":
      t_p = att["T_p"](x_p * att["N_p"](x_p))
      t_m = att["T_m"](x_m * att["N_m"](x_m))
      x_p = x_p + x_m * t_m
      return x_p, x_m + x_p * t_p
    if self.mode == "paper":
      g_p = att["T_p"](x_p) * att["N_p"](x_p)
      g_m = att["T_m"](x_m) * att["N_m"](x_m)
      return x_p + x_m * g_m, x_m + x_p * g_p
    raise ValueError(f"fusion must be one of {FUSIONS}, got {self.mode!r}")


class BPMGCN(nn.Module):
  """BPM-GCN; call(skeleton [B, T, 16, 3] float32, train) -> dict(
    logits [B, classes] = (logits_posture + logits_movement) / 2 (what the code scores, in
      training and at test time), logits_posture, logits_movement [B, classes],
    affective [B, T, num_affective] (fc2_aff reshaped frame-major; the regression target is
      gait_features.affective_features), frame_mask bool [B, T]).

  Paper config: BPMGCN() with T = 48 (7,287,192 params; fusion="none": 7,272,024). The fusion
  MLPs and fc2_aff are sized by the input T (T, ceil(T/2), ceil(T/4); 31*T outputs).
  fusion: "code" (released cascaded, T-only update), "paper" (product form of eqs. 8-11),
    "none" (no interaction; the BPM-GCN row without the asterisk).
  pooling: "mean" over T x V (code) or "max" (paper text).
  mask_padding: derive valid frames (any non-zero joint, or `frame_mask` when given) and zero
    the velocity/acceleration across zero padding (no -p spike at the pad boundary); False =
    plain differences over all frames. The original preprocessing for this is unreleased.
  streams (ablations, paper Tables VI/XI/XIII): "both" (default); "posture" or "movement" build
    that stream alone (its data_bn, 10 blocks and classifier; the other stream's parameters do
    not exist) and logits = that stream's logits; needs fusion="none". Posture only: 3,826,260
    params (3,443,844 without fc2_aff); movement only: 3,445,764.
  affective_head: build fc2_aff (the affective-constraint regression, 382,416 params at T=48)
    on the posture stream; False removes it and the "affective" output (the "without the
    affective constraint" rows; the method then needs loss.affective_weight=0).
  num_blocks: the first N of the 10 blocks per stream (the fusions after blocks 4/7/10 that
    exist; heads on the last block's channels). 10 is the paper; fewer is a depth ablation and
    the `:smoke` variant's 5 (half the compile).
  dtype: compute dtype; params, BN statistics, softmaxes and logits stay float32.
  """
  num_classes: int = 4
  num_affective: int = gait_features.NUM_AFFECTIVE
  fusion: str = "code"
  pooling: str = "mean"
  mask_padding: bool = True
  streams: str = "both"
  affective_head: bool = True
  num_blocks: int = len(CHANNELS)
  dtype: Any = None

  def _stream(self, suffix: str) -> list[GCNBlock]:
    adj = egait_adjacency()
    return [GCNBlock(c, adj, stride=s, residual=i > 0, dtype=self.dtype,
                     name=f"l{i + 1}_{suffix}")
            for i, (c, s) in enumerate(zip(CHANNELS[:self.num_blocks],
                                           STRIDES[:self.num_blocks]))]

  @property
  def has_posture(self) -> bool:
    return self.streams in ("both", "posture")

  @property
  def has_movement(self) -> bool:
    return self.streams in ("both", "movement")

  @property
  def has_affective(self) -> bool:
    return self.has_posture and self.affective_head

  def check(self) -> None:
    if self.fusion not in FUSIONS:
      raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.streams not in STREAMS:
      raise ValueError(f"streams must be one of {STREAMS}, got {self.streams!r}")
    if not 1 <= self.num_blocks <= len(CHANNELS):
      raise ValueError(f"num_blocks must be in 1..{len(CHANNELS)}, got {self.num_blocks}")
    if self.streams != "both" and self.fusion != "none":
      raise ValueError(f"streams={self.streams!r} has no other stream to fuse with: set "
                       f"fusion='none' (got fusion={self.fusion!r})")

  @nn.compact
  def __call__(self, skeleton: Array, train: bool = False,
               frame_mask: Array | None = None) -> dict[str, Array]:
    self.check()
    skeleton = jnp.asarray(skeleton, jnp.float32)
    b, t, v, _ = skeleton.shape
    mask = (gait_features.frame_mask(skeleton) if frame_mask is None
            else jnp.asarray(frame_mask, bool))

    def data_bn(x, name):
      c = x.shape[-1]
      y = BatchNorm(name=name)(x.reshape(b, t, v * c), use_running_average=not train)
      return y.reshape(b, t, v, c).astype(self.dtype or jnp.float32)

    x_p = data_bn(skeleton, "data_bn_p") if self.has_posture else None
    x_m = None
    if self.has_movement:
      x_m = gait_features.motion_channels(skeleton, mask if self.mask_padding else None)
      x_m = data_bn(x_m, "data_bn_m")
    blocks_p = self._stream("p") if self.has_posture else [None] * self.num_blocks
    blocks_m = self._stream("m") if self.has_movement else [None] * self.num_blocks
    for i, (blk_p, blk_m) in enumerate(zip(blocks_p, blocks_m), start=1):
      if blk_p is not None:
        x_p = blk_p(x_p, train)
      if blk_m is not None:
        x_m = blk_m(x_m, train)
      if self.fusion != "none" and i in FUSION_AFTER:
        x_p, x_m = PMFusion(self.fusion, name=FUSION_AFTER[i])(x_p, x_m)
    pool = jnp.mean if self.pooling == "mean" else jnp.max
    cls_std = math.sqrt(2.0 / self.num_classes)
    n_aff = self.num_affective * t
    head = lambda n, std, axes, name, fan_in: dense(  # noqa: E731
        n, axes=axes, kernel_init=_normal(std), bias_init=torch_default_bias_init(fan_in),
        name=name)
    out = {"frame_mask": mask}
    if self.has_posture:
      f_p = pool(x_p.astype(jnp.float32), axis=(1, 2))
      out["logits_posture"] = head(self.num_classes, cls_std, ("embed", "classes"),
                                   "fc1_classifier_p", f_p.shape[-1])(f_p)
      if self.affective_head:
        aff = head(n_aff, math.sqrt(2.0 / n_aff), ("embed", "mlp"), "fc2_aff",
                   f_p.shape[-1])(f_p)
        out["affective"] = aff.reshape(b, t, self.num_affective)
    if self.has_movement:
      f_m = pool(x_m.astype(jnp.float32), axis=(1, 2))
      out["logits_movement"] = head(self.num_classes, cls_std, ("embed", "classes"),
                                    "fc1_classifier_m", f_m.shape[-1])(f_m)
    if self.streams == "both":
      out["logits"] = (out["logits_posture"] + out["logits_movement"]) / 2
    else:
      out["logits"] = out[f"logits_{self.streams}"]
    return out
