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


def test_weighted_f1_equals_scikit_learn():
  from sklearn.metrics import f1_score
  r = np.random.default_rng(0)
  labels = r.integers(0, 5, 200)
  labels[labels == 3] = 4  # a class without support, still predicted
  logits = r.standard_normal((200, 5))
  logits[np.arange(100), labels[:100]] += 2.0
  pol = np.array([0, 1, 0, 1, 1])
  m = classification.classification_metrics(logits, labels, num_classes=5, polarity=pol)
  pred = logits.argmax(-1)
  np.testing.assert_allclose(m["weighted_f1"], f1_score(labels, pred, average="weighted"),
                             rtol=1e-12)
  np.testing.assert_allclose(m["polarity_weighted_f1"],
                             f1_score(pol[labels], pol[pred], average="weighted"), rtol=1e-12)
