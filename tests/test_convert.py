"""Converters: the torch-free .pth reader, key mapping (strict, every key accounted for), the
partial-tree merge used by init_from, and numerical parity with PyTorch forwards of the original
architectures (jaxaffect/convert/torch_reference.py, jaxaffect/methods/vaanet/torch_reference.py)
in eval mode with random weights and BN statistics."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxaffect.convert import __main__ as cli  # noqa: E402
from jaxaffect import converted_checkpoint as store
from jaxaffect.convert import converters, torch_pickle  # noqa: E402
from jaxaffect.methods.vaanet import converters as vaanet_converters  # noqa: E402
from jaxaffect.convert.keymap import ConversionError  # noqa: E402
from jaxaffect.nn.resnet2d import ResNet2D  # noqa: E402
from jaxaffect.nn.resnet3d import ResNet3D  # noqa: E402

from jaxaffect.convert.torch_reference import (HaraResNet3D, TorchvisionResNet,  # noqa: E402
                                               randomize_)
from jaxaffect.methods.vaanet.torch_reference import VAANetRef  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-4, atol=1e-4)


def _zeros_like_abstract(tree):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def _shape_only(module):
  """A state_dict of zero-cost NumPy views with the module's key/shape layout (meta tensors)."""
  return {k: np.broadcast_to(np.zeros((), np.float32 if v.is_floating_point() else np.int64),
                             tuple(v.shape)) for k, v in module.state_dict().items()}


def _convert(tmp_path, argv, name):
  out = str(tmp_path / name)
  assert cli.main([*argv[:-1], argv[-1], out]) == 0
  return out


def _max_rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, np.max(np.abs(b))))


# ---- the .pth reader ---------------------------------------------------------------------------

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_pickle_reads_torch_save(tmp_path, zip_format):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  lin = torch.nn.Linear(3, 2)
  obj = {
      "w": base, "transposed": base.t(), "slice": base[1:3, 2:],  # share one storage
      "half": torch.randn(3, generator=g).half(), "bf16": torch.randn(3, generator=g).bfloat16(),
      "long": torch.arange(5), "bool": torch.tensor([True, False]), "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3), "param": torch.nn.Parameter(torch.ones(2)),
      "sd": lin.state_dict(), "opt": torch.optim.Adam(lin.parameters()).state_dict(),
      "np_scalar": np.float64(2.5), "size": torch.Size([2, 3]), "device": torch.device("cpu"),
      "nested": [1, (2, "x"), {"y": torch.ones(1)}],
  }
  path = tmp_path / "x.pth"
  torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
  got = torch_pickle.load(path)
  for k in ("w", "transposed", "slice", "half", "long", "bool", "scalar", "empty", "param"):
    ref = obj[k].detach().numpy()
    assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
    np.testing.assert_array_equal(got[k], ref)
    assert got[k].flags.c_contiguous and got[k].flags.owndata
  np.testing.assert_array_equal(got["bf16"].astype(np.float32), obj["bf16"].float().numpy())
  assert list(got["sd"]) == ["weight", "bias"]
  np.testing.assert_array_equal(got["sd"]["weight"], lin.weight.detach().numpy())
  assert got["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
  assert got["np_scalar"] == 2.5 and got["size"] == (2, 3)
  assert got["device"] == "cpu"  # an inert string: torch.device is never imported or called
  np.testing.assert_array_equal(got["nested"][2]["y"], np.ones(1, np.float32))


def test_torch_pickle_reads_2018_era_records(tmp_path):
  """Legacy files from torch 0.3/0.4 on GPU (Hara's 2018 weights) name torch.cuda storages and
  the v1 rebuild function: emulate them by rewriting the protocol-2 GLOBAL records."""
  sd = {"module.conv1.weight": torch.randn(4, 3, 7, 7, 7), "module.fc.bias": torch.randn(4)}
  path = tmp_path / "old.pth"
  torch.save({"state_dict": sd, "arch": "resnet-101"}, path, _use_new_zipfile_serialization=False)
  data = path.read_bytes()
  for old, new in ((b"torch._utils\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_tensor\n"),
                   (b"torch\nFloatStorage\n", b"torch.cuda\nFloatStorage\n")):
    assert data.count(old) == 1
    data = data.replace(old, new)
  path.write_bytes(data)
  got = torch_pickle.load(path)
  for k, v in sd.items():
    np.testing.assert_array_equal(got["state_dict"][k], v.numpy())


def test_torch_pickle_rejects_non_checkpoints(tmp_path):
  p = tmp_path / "bad.pth"
  p.write_bytes(b"not a checkpoint at all")
  with pytest.raises(torch_pickle.TorchFileError, match="bad.pth"):
    torch_pickle.load(p)


# ---- Hara 3D ResNets ---------------------------------------------------------------------------

def _hara_forward_parity(model_t, out_dir, depth, t_size, clip):
  model = ResNet3D(depth, 64, conv1_t_size=t_size)
  abstract = converters.abstract_variables(model, clip, use_running_average=True)
  fresh = _zeros_like_abstract(abstract)
  params, state = store.restore_converted(
      out_dir, {"visual_backbone": fresh["params"]},
      {"batch_stats": {"visual_backbone": fresh["batch_stats"]}})
  variables = {"params": params["visual_backbone"],
               "batch_stats": state["batch_stats"]["visual_backbone"]}
  got = jax.jit(lambda v, x: model.apply(v, x, use_running_average=True))(variables, clip)
  with torch.no_grad():
    ref = model_t.features(torch.from_numpy(clip).permute(0, 4, 1, 2, 3))
  ref = ref.permute(0, 2, 3, 4, 1).numpy()
  assert got.shape == ref.shape
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_hara_2018_depth10_legacy_prefixed(tmp_path):
  """2018 layout: {'state_dict': module.-prefixed, no num_batches_tracked}, legacy pickle."""
  m = randomize_(HaraResNet3D(10, 400), seed=1)
  sd = {f"module.{k}": v for k, v in m.state_dict().items()
        if not k.endswith("num_batches_tracked")}
  path = tmp_path / "resnet-10-kinetics.pth"
  torch.save({"state_dict": sd, "arch": "resnet-10", "epoch": 200, "optimizer": {}}, path,
             _use_new_zipfile_serialization=False)
  out = _convert(tmp_path, ["hara3d", "--depth", "10", str(path)], "out")
  meta = store.read_meta(out)
  assert meta["subtrees"] == ["params/visual_backbone", "batch_stats/visual_backbone"]
  assert set(meta["dropped"]) == {"fc.weight", "fc.bias"}
  # The PyTorch key -> parameter path map, for readers of the converted checkpoint.
  assert len(meta["key_map"]) == meta["num_keys"]
  assert meta["key_map"]["bn1.running_var"] == "batch_stats/visual_backbone/bn1/var"
  assert "hara_2018" in meta["info"]["normalization_note"]
  assert meta["info"]["stripped_prefix"] == "module."
  assert meta["info"]["normalization_matching_weights"] == "hara_2018"
  clip = np.random.RandomState(0).randn(1, 8, 64, 64, 3).astype(np.float32)
  _hara_forward_parity(m, out, 10, 7, clip)


def test_hara_2020_depth50_zip_conv1_t3(tmp_path):
  """2020 layout: no prefix, num_batches_tracked present, other conv1 temporal size, 1039 fc;
  depth and conv1_t_size inferred from the weights."""
  m = randomize_(HaraResNet3D(50, 1039, conv1_t_size=3), seed=2)
  path = tmp_path / "r3d50_KM_200ep.pth"
  torch.save({"state_dict": m.state_dict(), "arch": "resnet", "epoch": 200, "optimizer": {},
              "scheduler": {"milestones": {50: 1}}}, path)
  out = _convert(tmp_path, ["hara3d", str(path)], "out")
  info = store.read_meta(out)["info"]
  assert (info["depth"], info["conv1_t_size"], info["pretrain_classes"]) == (50, 3, 1039)
  assert info["normalization_matching_weights"] == "hara_2020"
  clip = np.random.RandomState(1).randn(1, 8, 32, 32, 3).astype(np.float32)
  _hara_forward_parity(m, out, 50, 3, clip)


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_hara_key_mapping_real_sizes(depth):
  """Every key of the real-size models (shapes only) maps: 2018 prefixed without counters for
  101, 2020 unprefixed with counters and 1039 classes otherwise."""
  with torch.device("meta"):
    m = HaraResNet3D(depth, 400 if depth == 101 else 1039)
  sd = _shape_only(m)
  if depth == 101:
    sd = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  conv = converters.hara3d({"state_dict": sd}, depth=depth)
  n_tensors = sum(not k.endswith("num_batches_tracked") for k in sd) - 2  # minus fc
  assert len(conv.used) == n_tensors
  abstract = converters.abstract_variables(
      ResNet3D(depth, 64), jax.ShapeDtypeStruct((1, 16, 112, 112, 3), np.float32),
      use_running_average=True)
  got = jax.tree.map(lambda a: a.shape, conv.variables)
  want = jax.tree.map(lambda a: a.shape, {c: {"visual_backbone": t} for c, t in abstract.items()})
  assert got == want
  if depth == 101:
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(conv.variables["params"]))
    assert n == 85_245_120  # the body's parameter count


def _hara10_state_dict():
  with torch.device("meta"):
    return _shape_only(HaraResNet3D(10, 400))


def test_missing_key_is_named():
  sd = _hara10_state_dict()
  del sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(ConversionError, match=r"1 missing keys:\n\s+layer2\.0\.downsample\.1\."
                                            r"running_var \(for batch_stats/visual_backbone/"
                                            r"layer2_0/downsample_1/var"):
    converters.hara3d(sd, depth=10)


def test_extra_key_is_named():
  sd = _hara10_state_dict()
  sd["layer4.0.se.fc.weight"] = np.zeros((4, 4), np.float32)
  with pytest.raises(ConversionError, match=r"1 unexpected keys:\n\s+layer4\.0\.se\.fc\.weight"):
    converters.hara3d(sd, depth=10)


def test_shape_mismatch_names_key_and_both_shapes():
  sd = _hara10_state_dict()
  sd["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 3, 3), np.float32)
  with pytest.raises(ConversionError, match=r"layer1\.0\.conv2\.weight: checkpoint shape "
                                            r"\(64, 64, 1, 3, 3\), model expects "
                                            r"\(64, 64, 3, 3, 3\)"):
    converters.hara3d(sd, depth=10)


def test_wrong_depth_and_shortcut_a_and_mixed_prefix_are_explained():
  sd = _hara10_state_dict()
  with pytest.raises(ConversionError, match=r"missing keys(.|\n)*layer1\.1\.conv1\.weight"):
    converters.hara3d(sd, depth=18)
  no_shortcut = {k: v for k, v in sd.items() if ".downsample." not in k}
  with pytest.raises(ConversionError, match="shortcut type A"):
    converters.hara3d(no_shortcut, depth=10)
  mixed = dict(sd)
  mixed["module.conv1.weight"] = mixed.pop("conv1.weight")
  with pytest.raises(ConversionError, match="'module.' prefix"):
    converters.hara3d(mixed)


# ---- torchvision ResNet-18 -> VAANet's audio backbone ------------------------------------------

def test_torchvision_resnet18_audio_backbone(tmp_path):
  """ImageNet conv1/fc dropped (accounted), the 1-channel (7,1) stem keeps the model's init, the
  body matches a torch audio ResNet built the VAANet way."""
  tv = randomize_(TorchvisionResNet(18), seed=3)
  path = tmp_path / "resnet18-f37072fd.pth"
  torch.save(tv.state_dict(), path)
  out = _convert(tmp_path, ["torchvision-resnet18", str(path)], "out")
  meta = store.read_meta(out)
  assert meta["keep_init"] == ["params/audio_backbone/conv1/kernel"]
  assert set(meta["dropped"]) >= {"conv1.weight", "fc.weight", "fc.bias"}

  model = ResNet2D(18, 64)
  x = np.random.RandomState(2).randn(2, 256, 32, 1).astype(np.float32) * 10
  abstract = converters.abstract_variables(model, x, use_running_average=True)
  rs = np.random.RandomState(5)  # a distinct "fresh init" to check the stem keeps it
  init = jax.tree.map(lambda s: rs.randn(*s.shape).astype(s.dtype) * 0.1, abstract)
  params, state = store.restore_converted(out, {"audio_backbone": init["params"]},
                                          {"batch_stats": {"audio_backbone": init["batch_stats"]}})
  stem = params["audio_backbone"]["conv1"]["kernel"]
  np.testing.assert_array_equal(np.asarray(stem), init["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(np.asarray(params["audio_backbone"]["layer3_1"]["bn2"]["scale"]),
                                tv.layer3[1].bn2.weight.detach().numpy())
  variables = {"params": params["audio_backbone"],
               "batch_stats": state["batch_stats"]["audio_backbone"]}
  got = jax.jit(lambda v, x: model.apply(v, x, use_running_average=True))(variables, x)

  a_conv1 = torch.nn.Conv2d(1, 64, (7, 1), (2, 1), (3, 0), bias=False)
  with torch.no_grad():
    a_conv1.weight.copy_(torch.from_numpy(np.array(stem).transpose(3, 2, 0, 1)))
    ref_net = torch.nn.Sequential(a_conv1, *list(tv.children())[1:-2],
                                  torch.nn.AvgPool2d([8, 2])).eval()
    ref = torch.flatten(ref_net(torch.from_numpy(x).permute(0, 3, 1, 2)), 1).numpy()
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


# ---- full VAANet -------------------------------------------------------------------------------

VAANET_SMALL = ["--config.model.visual_depth=10", "--config.dataset.num_segments=2",
                "--config.dataset.audio_segments=2"]


def test_vaanet_checkpoint_parity(tmp_path):
  """A checkpoint of the released training code ({'epoch','state_dict','optimizer'}) converts and
  the JAX VAANet reproduces the PyTorch eval forward: layer4 features, attentions, logits."""
  ref_model = randomize_(VAANetRef(visual_depth=10, seq_len=2, audio_n_segments=2, n_classes=8,
                                   m=16), seed=4)
  opt = torch.optim.Adam([p for p in ref_model.parameters() if p.requires_grad], lr=2e-4)
  path = tmp_path / "save_30.pth"
  torch.save({"epoch": 31, "state_dict": ref_model.state_dict(), "optimizer": opt.state_dict()},
             path)
  config_arg = os.path.join(ROOT, "configs", "vaanet_ve8.py")
  out = str(tmp_path / "out")
  assert cli.main(["vaanet", "--config", config_arg, *VAANET_SMALL, str(path), out]) == 0
  meta = store.read_meta(out)
  assert meta["keep_init"] == [] and "params/fc" in meta["subtrees"]
  assert all(k.endswith("num_batches_tracked") for k in meta["dropped"])

  config = cli.load_config(config_arg, VAANET_SMALL)
  abstract = vaanet_converters.vaanet_abstract(config)
  fresh = _zeros_like_abstract(abstract)
  params, state = store.restore_converted(out, fresh["params"],
                                          {"batch_stats": fresh["batch_stats"]})
  from jaxaffect import method as methods
  model = methods.get_method(config).model
  rs = np.random.RandomState(3)
  video = rs.randint(0, 256, (1, 2, 16, 112, 112, 3)).astype(np.uint8)
  audio = (rs.randn(1, 2, 256, 32) * 10).astype(np.float32)

  @jax.jit
  def forward(variables, video, audio):
    return model.apply(variables, video, audio, train=False,
                       capture_intermediates=lambda mdl, _: isinstance(mdl, ResNet3D))

  out_j, inter = forward({"params": params, **state}, video, audio)
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(video).permute(0, 1, 5, 2, 3, 4).float(),
                    torch.from_numpy(audio).reshape(1, -1, 32))
  feat = inter["intermediates"]["visual_backbone"]["__call__"][0]  # [B*S, 1, 4, 4, 512]
  feat = np.asarray(feat).reshape(2, 16, 512).transpose(0, 2, 1)
  np.testing.assert_allclose(feat, ref["features"].numpy(), **TOL)
  for k in ("alpha", "beta", "gamma", "audio_gamma", "logits"):
    assert _max_rel(out_j[k], ref[k].numpy()) < 1e-4, k

  # The trainer's --config.init_from takes the converted directory (params and BN statistics).
  from jaxaffect import trainer
  config.unlock()
  config.init_from = out
  s = trainer.setup(config, prepare_data=False)
  loaded, start = trainer.initial_state(s, config, None)
  assert start == 0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(loaded["params"]))):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(jax.device_get(loaded["model_state"]))):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_vaanet_real_size_key_mapping():
  """The full-size released model (ResNet-101, S=12, A=16, 97,869,012 params) maps completely
  onto configs/vaanet_ve8.py; a mismatching config is named by key and shapes."""
  with torch.device("meta"):
    ref = VAANetRef(visual_depth=101, seq_len=12, audio_n_segments=16, n_classes=8, m=16)
  sd = _shape_only(ref)
  config = cli.load_config(os.path.join(ROOT, "configs", "vaanet_ve8.py"), [])
  conv = vaanet_converters.vaanet({"epoch": 1, "state_dict": sd, "optimizer": {}}, config)
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(conv.variables["params"]))
  assert n == 97_869_012
  assert conv.variables["params"]["visual_backbone"]["layer3_22"]["conv2"]["kernel"].shape == (
      3, 3, 3, 256, 256)
  config.model.visual_input = "features"  # no backbone in that model: converted all the same
  assert vaanet_converters.vaanet({"state_dict": sd}, config).used == conv.used
  config.model.visual_input = "frames"
  config.dataset.num_segments = 10
  with pytest.raises(ConversionError, match=r"ta_net\.fc\.weight: checkpoint shape \(12, 12\), "
                                            r"model expects \(10, 10\)"):
    vaanet_converters.vaanet({"state_dict": sd}, config)


# ---- init_from merge semantics ------------------------------------------------------------------

def test_restore_converted_rejects_partial_depth_mismatch(tmp_path):
  """A ResNet-10 visual_backbone cannot half-fill a ResNet-18 one; a covered subtree must be
  complete, everything outside it keeps the fresh values."""
  conv = converters.hara3d(_hara10_state_dict(), depth=10)
  out = str(tmp_path / "h10")
  store.save_converted(out, conv)
  assert store.is_converted(out) and not store.is_converted(str(tmp_path))
  x = jax.ShapeDtypeStruct((1, 16, 112, 112, 3), np.float32)
  a18 = converters.abstract_variables(ResNet3D(18, 64), x, use_running_average=True)
  f18 = _zeros_like_abstract(a18)
  with pytest.raises(ConversionError, match=r"model variable params/visual_backbone/layer1_1/"
                                            r"conv1/kernel is not in the checkpoint"):
    store.restore_converted(out, {"visual_backbone": f18["params"]},
                            {"batch_stats": {"visual_backbone": f18["batch_stats"]}})
  a10 = converters.abstract_variables(ResNet3D(10, 64), x, use_running_average=True)
  # Fresh state as the trainer holds it: sharded jax.Arrays (restored onto the same shardings).
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  shard = lambda spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  f10 = jax.tree.map(lambda a: jax.device_put(a + 7.0, shard(())), _zeros_like_abstract(a10))
  k = jax.device_put(f10["params"]["layer4_0"]["conv2"]["kernel"], shard((None,) * 4 + ("x",)))
  f10["params"]["layer4_0"]["conv2"]["kernel"] = k
  other = {"w": np.full((3,), 5.0, np.float32)}
  params, state = store.restore_converted(
      out, {"visual_backbone": f10["params"], "head": other},
      {"batch_stats": {"visual_backbone": f10["batch_stats"]}})
  np.testing.assert_array_equal(params["head"]["w"], other["w"])  # outside: untouched
  p2, s2 = store.restore_converted(out, {"head": other}, {}, ignore_subtrees=("visual_backbone",))
  assert p2 == {"head": other} and s2 == {}
  got = params["visual_backbone"]["layer4_0"]["conv2"]["kernel"]
  assert got.sharding == k.sharding and float(jax.numpy.max(jax.numpy.abs(got))) == 0.0
  assert state["batch_stats"]["visual_backbone"]["bn1"]["var"].sharding == shard(())


def test_cli_config_overrides():
  path = os.path.join(ROOT, "configs", "vaanet_ve8.py")
  c = cli.load_config(path + ":split=2", ["--config.model.visual_depth=50",
                                          "--config.model.use_audio=false"])
  assert (c.dataset.split, c.model.visual_depth, c.model.use_audio) == (2, 50, False)
  with pytest.raises(cli.UserError, match="model.nope"):
    cli.load_config(path, ["--config.model.nope=1"])
  with pytest.raises(cli.UserError, match="unrecognised argument"):
    cli.load_config(path, ["--depth=3"])


def test_cli_subprocess_inspect_and_error_exit(tmp_path):
  m = HaraResNet3D(10, 400)
  sd = m.state_dict()
  del sd["bn1.bias"]
  path = tmp_path / "broken.pth"
  torch.save(sd, path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "jaxaffect.convert", "inspect", str(path)],
                     capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
  assert r.returncode == 0 and "layer4.0.conv2.weight\t(512, 512, 3, 3, 3)\tfloat32" in r.stdout
  r = subprocess.run([sys.executable, "-m", "jaxaffect.convert", "hara3d", str(path),
                      str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, env=env,
                     timeout=120)
  assert r.returncode == 2 and "bn1.bias" in r.stderr and "missing keys" in r.stderr
  assert not os.path.exists(tmp_path / "out")
