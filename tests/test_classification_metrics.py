import numpy as np
import pytest

from jaxaffect.evaluation import classification


def test_metrics_match_hand_computed():
  labels = np.array([0, 0, 1, 2, 2, 2])
  pred = np.array([0, 1, 1, 2, 0, 2])
  logits = np.eye(3)[pred]
  m = classification.classification_metrics(logits, labels, num_classes=3,
                                            polarity=np.array([0, 1, 1]),
                                            class_names=("a", "b", "c"))
  assert m["top1"] == pytest.approx(4 / 6)
  assert m["accuracy/a"] == pytest.approx(0.5)
  assert m["accuracy/b"] == pytest.approx(1.0)
  assert m["accuracy/c"] == pytest.approx(2 / 3)
  assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
  # polarity of (label, pred): (0,0) ok, (0,1) wrong, (1,1) ok, (1,1) ok, (1,0) wrong, (1,1) ok
  assert m["polarity_accuracy"] == pytest.approx(4 / 6)
  assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_metrics_reject_mismatch():
  with pytest.raises(ValueError, match="3 predictions for 2 labels"):
    classification.classification_metrics(np.zeros((3, 2)), np.zeros(2), num_classes=2)
