"""What every method's config needs to know about the labelled video-emotion datasets: class
names in label order, polarity per class (1 = positive; the polarity metrics only) and the size
of the training split (steps per epoch). Kept once here, so the configs of different papers on
the same dataset cannot drift apart."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EmotionDataset:
  name: str                      # dataset.name of the labelled set
  class_names: tuple[str, ...]
  polarity: tuple[int, ...]
  train_clips: int               # training videos (split 1 where there are splits)

  def steps_per_epoch(self, batch_size: int) -> int:
    """Full batches per epoch (the originals drop the last partial batch)."""
    return self.train_clips // batch_size

  def apply(self, dataset) -> None:
    """Sets dataset.name, num_classes, class_names and polarity of a config's dataset node."""
    dataset.name = self.name
    dataset.num_classes = len(self.class_names)
    dataset.class_names = self.class_names
    dataset.polarity = self.polarity


# VideoEmotion-8; positive: Anticipation, Joy, Surprise, Trust (the VAANet code's pcce_ve8
# table). Split 1 has 732 training videos.
VE8 = EmotionDataset(
    "ve8", ("Anger", "Anticipation", "Disgust", "Fear", "Joy", "Sadness", "Surprise", "Trust"),
    (0, 1, 0, 0, 1, 0, 1, 1), 732)
# Ekman-6 (1,637 videos, 819 train / 818 test); joy and surprise positive (inferred, as VE-8's
# Surprise).
EKMAN6 = EmotionDataset(
    "ekman6", ("anger", "disgust", "fear", "joy", "sadness", "surprise"), (0, 0, 0, 1, 0, 1),
    819)
# CAER (13,201 clips, about 70% for training); Happy positive and Neutral counted positive so
# the binary table stays defined (inferred).
CAER = EmotionDataset(
    "caer", ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    (0, 0, 0, 1, 1, 0, 1), 9240)
