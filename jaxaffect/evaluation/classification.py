"""Classification metrics on NumPy arrays (no model, no trainer).

top1: fraction of examples whose argmax equals the label. mean_class_accuracy: the mean over
classes present in the labels of per-class recall. polarity_accuracy: the argmax's polarity equals
the label's polarity. confusion[i][j]: examples of class i predicted as j. weighted_f1 and
polarity_weighted_f1: scikit-learn's f1_score(average="weighted") (what MART reports) of the
classes and of their polarities: per-class F1 = 2 TP / (2 TP + FP + FN) (0 when that is 0/0),
averaged with the classes' label counts as weights.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxaffect import evaluators


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels.astype(np.int64), pred.astype(np.int64)), 1)
  return cm


def weighted_f1(cm: np.ndarray) -> float:
  """scikit-learn's weighted F1 from a confusion matrix (rows = labels, columns = predictions)."""
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(1).astype(np.float64)
  denom = support + cm.sum(0)  # 2 TP + FP + FN = (TP + FN) + (TP + FP)
  f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
  return float((f1 * support).sum() / max(support.sum(), 1.0))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, num_classes: int,
                           polarity: np.ndarray | None = None,
                           class_names: Sequence[str] = ()) -> dict:
  logits = np.asarray(logits)
  labels = np.asarray(labels).astype(np.int64)
  if logits.shape[0] != labels.shape[0]:
    raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
  if labels.size == 0:
    raise ValueError("no evaluation examples")
  pred = logits.argmax(-1)
  cm = confusion_matrix(pred, labels, num_classes)
  support = cm.sum(1)
  per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
  names = list(class_names) if len(class_names) == num_classes else [str(i) for i in
                                                                       range(num_classes)]
  out = {
      "top1": float((pred == labels).mean()),
      "weighted_f1": weighted_f1(cm),
      "mean_class_accuracy": float(np.nanmean(per_class)),
      "num_examples": int(labels.size),
      "confusion": cm.tolist(),
  }
  for name, acc in zip(names, per_class):
    if not np.isnan(acc):
      out[f"accuracy/{name}"] = float(acc)
  if polarity is not None:
    pol = np.asarray(polarity)
    out["polarity_accuracy"] = float((pol[pred] == pol[labels]).mean())
    n_pol = int(pol.max()) + 1
    out["polarity_weighted_f1"] = weighted_f1(confusion_matrix(pol[pred], pol[labels], n_pol))
  return out


@evaluators.register("classification")
def evaluate(outputs, fields, *, method, logits: str = "logits", label: str = "label",
             polarity: bool = True) -> dict:
  """The `classification` evaluator: the metrics above from `outputs[logits]` and
  `fields[label]`; classes and names from `config.dataset` (num_classes, class_names), and the
  polarity accuracy when `config.dataset.polarity` maps classes to polarities."""
  ds = method.config.dataset
  table = ds.get("polarity", None) if polarity else None
  return classification_metrics(
      outputs[logits], fields[label], num_classes=int(ds.num_classes),
      polarity=np.asarray(table, np.int32) if table is not None else None,
      class_names=tuple(ds.get("class_names", ()) or ()))
