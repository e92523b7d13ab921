"""CLI: python -m data_pipelines.synthetic --out DIR [--num-train-per-class N ...]
[--subtitles [--unlabelled N] [--pool-coupling P]] [--keyframes] [--gait|--tsl].
"""
from __future__ import annotations

import argparse
import sys

from data_pipelines.synthetic import affect_world


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m data_pipelines.synthetic",
      description="Generate the synthetic VE-8-style affect dataset (mp4 + split lists).",
  )
  p.add_argument("--out", required=True, help="output directory (created; must be new or empty)")
  p.add_argument("--num-train-per-class", type=int, default=40)
  p.add_argument("--num-test-per-class", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
  p.add_argument("--fps", type=int, default=10)
  p.add_argument("--sr", type=int, default=16000, help="audio sample rate")
  p.add_argument("--min-duration", type=float, default=None, help="seconds (2; 4 with --keyframes)")
  p.add_argument("--max-duration", type=float, default=None, help="seconds (3; 6 with --keyframes)")
  p.add_argument("--keyframes", action="store_true",
                 help="the class cue only during one emotional segment per clip, written to "
                      "keyframes.json (CTEN's detection targets)")
  p.add_argument("--num-workers", type=int, default=None, help="processes (default: CPU count)")
  p.add_argument("--subtitles", action="store_true",
                 help="also write .srt subtitles, vocab.txt and lexicon.tsv (MART's text)")
  p.add_argument("--unlabelled", type=int, default=None, metavar="N",
                 help="clips in <out>/unlabelled/ (no labels; default: 5x the train split "
                      "with --subtitles, else 0)")
  p.add_argument("--pool-coupling", "--pool_coupling", type=float,
                 default=affect_world.POOL_COUPLING, metavar="P",
                 help="probability that an unlabelled clip's sound follows its picture (its "
                      "audio cue is its visual group's own; else drawn independently); "
                      "labelled clips keep the two independent; 0 = the pool of earlier "
                      "versions (default: %(default)s)")
  p.add_argument("--gait", action="store_true",
                 help="write the synthetic Emotion-Gait h5 layout instead (synthetic/gait.py)")
  p.add_argument("--num-per-class", type=int, default=200, help="gaits per class (--gait)")
  p.add_argument("--tsl", action="store_true",
                 help="write the synthetic TSL-300 feature layout instead (synthetic/untrimmed.py)")
  p.add_argument("--num-train", type=int, default=160, help="train videos (--tsl)")
  p.add_argument("--num-test", type=int, default=40, help="test videos (--tsl)")
  p.add_argument("--min-snippets", type=int, default=48, help="16-frame snippets (--tsl)")
  p.add_argument("--max-snippets", type=int, default=256, help="16-frame snippets (--tsl)")
  a = p.parse_args(argv)
  try:
    if a.gait and a.tsl:
      raise ValueError("--gait and --tsl exclude each other")
    if a.tsl:
      from data_pipelines.synthetic import untrimmed  # pylint: disable=g-import-not-at-top
      untrimmed.generate_tsl_style(a.out, seed=a.seed, num_train=a.num_train,
                                   num_test=a.num_test, min_snippets=a.min_snippets,
                                   max_snippets=a.max_snippets)
      return 0
    if a.gait:
      from data_pipelines.synthetic import gait  # pylint: disable=g-import-not-at-top
      gait.generate_emotion_gait_style(a.out, seed=a.seed, num_per_class=a.num_per_class)
      return 0
    affect_world.generate_ve8_style(
        a.out, seed=a.seed, num_train_per_class=a.num_train_per_class,
        num_test_per_class=a.num_test_per_class, size=a.size, fps=a.fps, sr=a.sr,
        min_duration=a.min_duration, max_duration=a.max_duration, num_workers=a.num_workers,
        with_subtitles=a.subtitles, num_unlabelled=a.unlabelled, keyframes=a.keyframes,
        pool_coupling=a.pool_coupling,
    )
  except (FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
