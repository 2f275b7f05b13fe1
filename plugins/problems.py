"""Single-label classification as a problem kind that modality tasks compose.

:class:`SingleLabelClassification` holds everything about "one class per row" that does not
depend on the modality: class ids, what is left after validation, the stratification key,
class counts, the cross-entropy loss, softmax predictions, the majority-class baseline and
the prediction columns of ``predictions_test.csv`` and ``tuneforge predict``. A task mixes it
in front of its modality base::

    class TextClassificationTask(SingleLabelClassification, TextTask): ...

Multi-label classification (:mod:`tuneforge.plugins.multilabel`) and regression
(:class:`tuneforge.plugins.regression.RegressionTaskMixin`) are the other problem kinds.
Nothing here is registered: the module only provides bases.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tuneforge.components import Metric, Task
from tuneforge.data import TaskData, class_list
from tuneforge.errors import DataError, UserError, short

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from tuneforge.split import Split


def label_ids(data: TaskData, rows: Any = None) -> np.ndarray:
    """Class ids (positions in ``data.classes``) of ``rows`` (all rows by default)."""
    part = data if rows is None else data.subset(rows)
    return part.label_ids()


class SingleLabelClassification(Task):
    """The problem part of a classification task: each row has exactly one of ``data.classes``.

    The modality task provides loading (a :class:`~tuneforge.data.TaskData` whose ``classes``
    are the class names in label-id order and whose ``target`` column holds them), datasets
    whose items carry ``labels`` = the class id, the model and artifacts.
    """

    problem: ClassVar[str] = "classification"

    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows``: class ids (int64)."""
        return label_ids(data, rows)

    def output_names(self, data: TaskData) -> list[str]:
        """One output per class, in label-id order."""
        return [str(c) for c in data.classes or []]

    def after_validation(self, data: TaskData, data_config: Any) -> TaskData:
        """Two classes at least must be left; classes no row has any more are dropped from the
        label ids unless ``data.classes`` declared them."""
        if data.classes is None:
            return data
        known = data.frame[data.target].isin(data.classes)
        if data_config.classes and not known.all():  # declared classes a loader did not check
            row = data.frame.index[~known][0]
            raise DataError(
                f"{data.source}: row {int(row)}: label {short(data.frame.loc[row, data.target])} "
                f"is not one of the classes {short(data.classes)} ({int((~known).sum())} such rows)"
            )
        left = data.frame[data.target].nunique()
        if left < 2:
            raise DataError(
                f"{data.source}: only {left} class left after validation; classification "
                "needs at least two"
            )
        if not data_config.classes:
            # Classes the validators removed or merged away are not trained on.
            data = data.subset(data.frame.index)
            data.classes = class_list(data.frame[data.target])
        return data

    def stratify_labels(self, data: TaskData) -> np.ndarray:
        """The class ids: each split keeps the class proportions."""
        return label_ids(data)

    def label_counts(self, data: TaskData, rows: np.ndarray) -> dict[str, int]:
        counts = np.bincount(label_ids(data, rows), minlength=len(data.classes or []))
        return {str(c): int(n) for c, n in zip(data.classes or [], counts, strict=True)}

    def labels_record(self, data: TaskData) -> dict[str, Any]:
        """``{"classes": [...]}``: the class of each output, in order."""
        return {"classes": data.classes}

    def load_labelled(
        self, data_config: Any, base_dir: Path, path: Path, labels_record: dict[str, Any]
    ) -> TaskData:
        """:meth:`load` of ``path`` with the training data's classes as ``data.classes``: the
        same label ids, and a label the training data does not have is an error naming the
        file and row."""
        classes = labels_record.get("classes")
        update: dict[str, Any] = {"path": Path(path)}
        if classes:
            update["classes"] = list(classes)
        return self.load(data_config.model_copy(update=update), base_dir)

    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        """Cross-entropy with optional class weights, or the focal loss."""
        from tuneforge.plugins.losses import classification_loss

        return classification_loss(class_weights, focal_gamma)

    def predictions(self, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        """Logits -> (predicted class ids, class probabilities)."""
        import torch

        probs = torch.softmax(logits.float(), dim=-1)
        return probs.argmax(dim=-1).numpy(), probs.numpy()

    def baselines(
        self, data: TaskData, split: Split, metrics: dict[str, Metric]
    ) -> dict[str, float]:
        """``majority_baseline_accuracy``: the test accuracy of always predicting the most
        frequent training class."""
        majority = np.bincount(label_ids(data, split.train)).argmax()
        return {
            "majority_baseline_accuracy": float((label_ids(data, split.test) == majority).mean())
        }

    def test_details(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> dict[str, Any]:
        """``per_class``: each class's precision, recall, F1 and support; ``confusion_matrix``:
        ``{"classes": [...], "counts": [[...]]}``, a row per true class and a column per
        predicted class, in label-id order."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        names = [str(c) for c in data.classes or []]
        if labels is None or not names:
            return {}
        y_true, (y_pred, _) = labels.numpy(), self.predictions(logits)
        ids = list(range(len(names)))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
        per_class = [
            {
                "class": name,
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, name in enumerate(names)
        ]
        counts = confusion_matrix(y_true, y_pred, labels=ids)
        return {
            "per_class": per_class,
            "confusion_matrix": {"classes": names, "counts": counts.astype(int).tolist()},
        }

    def prediction_frame(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> pd.DataFrame:
        """``row``, ``y_true``, ``y_pred`` (class names) and ``prob_<class>`` per class."""
        import pandas as pd

        y_pred, y_score = self.predictions(logits)
        names = np.asarray([str(c) for c in data.classes or []], dtype=object)
        frame = pd.DataFrame({"row": np.asarray(rows)})
        if labels is not None:
            frame["y_true"] = names[labels.numpy()]
        frame["y_pred"] = names[y_pred]
        for j, name in enumerate(names):
            frame[f"prob_{name}"] = y_score[:, j]
        return frame

    def prediction_columns(
        self, logits: Any, labels_record: dict[str, Any], source: Path
    ) -> pd.DataFrame:
        """``prediction`` (the class name) and ``prob_<class>`` per class."""
        import pandas as pd

        classes = labels_record.get("classes")
        if not isinstance(classes, list) or not classes:
            raise UserError(f"{source}: not a classification labels file (no classes list)")
        y_pred, y_score = self.predictions(logits)
        if np.ndim(y_score) != 2 or y_score.shape[1] != len(classes):
            raise UserError(
                f"{source}: {len(classes)} classes, but the checkpoint predicts "
                f"{np.shape(y_score)[-1]} class scores: the run folder's files do not belong "
                "together"
            )
        out = pd.DataFrame({"prediction": [classes[i] for i in y_pred]})
        for j, c in enumerate(classes):
            out[f"prob_{c}"] = y_score[:, j]
        return out
