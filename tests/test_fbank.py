"""MART's audio front end: Kaldi fbank (media.py), 100-frame segments and AST scaling."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import media
from data_pipelines.synthetic import common
from jaxaffect.data import audio_transforms as at

LOG_EPS = math.log(float(np.finfo(np.float32).eps))


def _signal(sr, seconds, seed=0, freq=440.0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(sr * seconds)) / sr
  return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(
      np.float32)


def _reference_frame(wave, sr, k, num_bins=128):
  """Frame k of Kaldi's fbank, written out longhand: scalar filters, a direct DFT."""
  win, shift = int(sr * 0.025), int(sr * 0.010)
  padded = 1
  while padded < win:
    padded *= 2
  x = [float(v) for v in wave[k * shift:k * shift + win]]
  mean = sum(x) / win
  x = [v - mean for v in x]
  x = [x[0] - 0.97 * x[0]] + [x[j] - 0.97 * x[j - 1] for j in range(1, win)]
  x = [v * (0.5 - 0.5 * math.cos(2 * math.pi * j / (win - 1))) for j, v in enumerate(x)]
  x = np.array(x + [0.0] * (padded - win))
  n = np.arange(padded)
  dft = np.array([np.sum(x * np.exp(-2j * np.pi * f * n / padded)) for f in range(padded // 2)])
  power = dft.real ** 2 + dft.imag ** 2
  mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)
  lo, hi = mel(20.0), mel(sr / 2)
  step = (hi - lo) / (num_bins + 1)
  out = []
  for b in range(num_bins):
    left, center, right = lo + b * step, lo + (b + 1) * step, lo + (b + 2) * step
    energy = 0.0
    for f in range(padded // 2):
      m = mel(f * sr / padded)
      if left < m <= center:
        energy += power[f] * (m - left) / (center - left)
      elif center < m < right:
        energy += power[f] * (right - m) / (right - center)
    out.append(math.log(max(energy, float(np.finfo(np.float32).eps))))
  return np.array(out)


@pytest.mark.parametrize("sr", [16000, 44100])
def test_frame_count_and_one_frame_match_longhand(sr):
  wave = _signal(sr, 0.5)
  feats = media.kaldi_fbank(wave, sr)
  win, shift = int(sr * 0.025), int(sr * 0.010)
  assert feats.dtype == np.float32
  assert feats.shape == (1 + (wave.size - win) // shift, 128)
  if sr == 16000:
    assert feats.shape[0] == 1 + (wave.size - 400) // 160 == 48
  for k in (0, feats.shape[0] - 1):
    np.testing.assert_allclose(feats[k], _reference_frame(wave, sr, k), atol=2e-5, rtol=0)
  assert media.kaldi_fbank(wave[:win - 1], sr).shape == (0, 128)
  assert media.kaldi_fbank(wave[:win], sr).shape == (1, 128)


def test_pure_tone_peaks_in_its_mel_bin():
  sr, freq = 16000, 1000.0
  feats = media.kaldi_fbank(np.sin(2 * np.pi * freq * np.arange(6400) / sr), sr)
  mel = lambda f: 1127.0 * np.log1p(f / 700.0)
  step = (mel(sr / 2) - mel(20.0)) / 129
  centers = mel(20.0) + step * (np.arange(128) + 1)
  expected = int(np.argmin(np.abs(centers - mel(freq))))
  peak = feats.mean(axis=0).argmax()
  assert abs(int(peak) - expected) <= 1
  # Far from the tone the energy is tiny: > 8 nats (e^8 ~ 3000x) below the peak.
  assert feats.mean(axis=0)[expected + 30] < feats.mean(axis=0)[peak] - 8


def test_empty_filters_at_16k_give_log_eps_as_torchaudio():
  banks16 = media.kaldi_mel_banks(128, 512, 16000)
  empty = np.flatnonzero(banks16.sum(axis=1) == 0)
  assert empty.size > 0 and empty.max() < 20  # Only the narrow low filters.
  feats = media.kaldi_fbank(_signal(16000, 0.3), 16000)
  np.testing.assert_array_equal(feats[:, empty], np.float32(LOG_EPS))
  assert (media.kaldi_mel_banks(128, 2048, 44100).sum(axis=1) > 0).all()


@pytest.mark.parametrize("sr", [22050, 44100])
def test_matches_kaldi_native_fbank(sr):
  knf = pytest.importorskip("kaldi_native_fbank")
  wave = _signal(sr, 1.5, seed=sr)
  wave = wave - wave.mean()
  opts = knf.FbankOptions()
  opts.frame_opts.samp_freq = sr
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = "hanning"
  opts.frame_opts.frame_shift_ms = 10.0
  opts.frame_opts.frame_length_ms = 25.0
  opts.mel_opts.num_bins = 128
  opts.use_energy = False
  opts.htk_compat = True
  online = knf.OnlineFbank(opts)
  online.accept_waveform(sr, wave.tolist())
  online.input_finished()
  ref = np.stack([np.asarray(online.get_frame(i)) for i in range(online.num_frames_ready)])
  ours = media.kaldi_fbank(wave, sr)
  assert ours.shape == ref.shape
  # kaldi-native-fbank computes in float32; the largest gaps sit in low-energy bins.
  assert np.abs(ours - ref).max() < 2e-3


def test_mart_fbank_subtracts_the_global_mean_and_reads_channel_0():
  sr = 16000
  left, right = _signal(sr, 0.3, seed=1), _signal(sr, 0.3, seed=2) + 0.5
  stereo = np.stack([left + 0.1, right])
  expected = media.kaldi_fbank(stereo[0].astype(np.float64) - stereo.astype(np.float64).mean(),
                               sr)
  np.testing.assert_array_equal(media.mart_fbank(stereo, sr), expected)
  np.testing.assert_array_equal(media.mart_fbank(left, sr), media.mart_fbank(left[None], sr))


def test_read_audio_channels_keeps_rate_and_channels(tmp_path):
  sr, seconds = 16000, 1.0
  t = np.arange(int(sr * seconds)) / sr
  tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
  path = tmp_path / "tone.mp4"
  common.write_mp4(path, np.zeros((8, 16, 16, 3), np.uint8), 8, tone, sr)
  channels, rate = media.read_audio_channels(path)
  assert rate == sr and channels.dtype == np.float32 and channels.shape[0] == 1
  assert abs(channels.shape[1] - tone.size) <= 2048  # AAC priming and padding.
  feats = media.mart_fbank(channels, rate)
  mel = lambda f: 1127.0 * np.log1p(f / 700.0)
  centers = mel(20.0) + (mel(sr / 2) - mel(20.0)) / 129 * (np.arange(128) + 1)
  assert abs(int(np.median(feats.argmax(axis=1))) - int(np.argmin(abs(centers - mel(1000))))) <= 1
  silent = tmp_path / "silent.mp4"
  common.write_mp4(silent, np.zeros((8, 16, 16, 3), np.uint8), 8)
  assert media.read_audio_channels(silent) is None
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  with pytest.raises(media.MediaError, match="bad.mp4"):
    media.read_audio_channels(bad)


def test_short_clip_is_tiled_to_segments():
  fbank = np.arange(150 * 3, dtype=np.float32).reshape(150, 3)
  out = at.fbank_segments(fbank, 4, 100)
  assert out.shape == (4, 100, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out.reshape(400, 3), fbank[np.arange(400) % 150])
  exact = np.ones((400, 2), np.float32)
  np.testing.assert_array_equal(at.fbank_segments(exact, 4, 100).reshape(400, 2), exact)


def test_long_clip_takes_one_window_per_block():
  fbank = np.arange(1003, dtype=np.float32)[:, None].repeat(2, axis=1)  # block = 250 frames.
  centre = at.fbank_segments(fbank, 4, 100)
  np.testing.assert_array_equal(centre[:, 0, 0], [75, 325, 575, 825])
  np.testing.assert_array_equal(np.diff(centre[..., 0], axis=1), 1)  # Contiguous windows.
  a = at.fbank_segments(fbank, 4, 100, np.random.default_rng(7))
  b = at.fbank_segments(fbank, 4, 100, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(0)
  offsets = np.stack([at.fbank_segments(fbank, 4, 100, rng)[:, 0, 0] - np.arange(4) * 250
                      for _ in range(600)])
  # MART's int(random() * (blk - 100)): offsets 0..149, the last start (150) never drawn.
  assert offsets.min() == 0 and offsets.max() == 149
  tight = np.arange(401, dtype=np.float32)[:, None]  # block == 100: offset 0 only.
  np.testing.assert_array_equal(
      at.fbank_segments(tight, 4, 100, rng)[:, 0, 0], [0, 100, 200, 300])
  with pytest.raises(ValueError, match="frames>0"):
    at.fbank_segments(np.zeros((0, 128)), 4)


def test_ast_normalize():
  x = np.array([at.AST_MEAN, 0.0, at.AST_MEAN + 2 * at.AST_STD], np.float32)
  np.testing.assert_allclose(at.ast_normalize(x), [0.0, 6.6268077 / 10.716932, 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(at.ast_normalize(jnp.asarray(x))), at.ast_normalize(x),
                             rtol=1e-6)
