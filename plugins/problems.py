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
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from tuneforge.components import Metric, StrictConfig, Task
from tuneforge.data import TaskData, class_list
from tuneforge.errors import ConfigError, DataError, UserError, short
from tuneforge.plugins.thresholds import ThresholdRule, check_fixed

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from tuneforge.split import Split


def label_ids(data: TaskData, rows: Any = None) -> np.ndarray:
    """Class ids (positions in ``data.classes``) of ``rows`` (all rows by default)."""
    part = data if rows is None else data.subset(rows)
    return part.label_ids()


class SingleLabelConfig(StrictConfig):
    """The parameters of a single-label classification task (``task: {name: ..., ...}``):
    calibration and, for two classes, the decision threshold (:mod:`tuneforge.plugins.calibration`,
    :mod:`tuneforge.plugins.thresholds`)."""

    calibration: Literal["auto", "temperature", "none"] = Field(
        "auto",
        description="temperature scaling fitted on val after training: auto (kept when it "
        "lowers the val NLL by 1%+), temperature (always kept) or none",
    )
    threshold: float | Literal["tune"] | ThresholdRule | None = Field(
        None,
        description="two classes only: the positive class's probability threshold, tune (best "
        "val F1) or {metric: f1|precision_at|recall_at, target: 0.9}; unset: the likelier class",
    )
    positive_class: str | int | None = Field(
        None, description="the class task.threshold is for (default: the second class)"
    )

    _fixed_threshold = field_validator("threshold")(check_fixed)


class SingleLabelClassification(Task):
    """The problem part of a classification task: each row has exactly one of ``data.classes``.

    The modality task provides loading (a :class:`~tuneforge.data.TaskData` whose ``classes``
    are the class names in label-id order and whose ``target`` column holds them), datasets
    whose items carry ``labels`` = the class id, the model and artifacts.

    After training the logits are calibrated by a temperature fitted on the validation split
    (``task.calibration``), and a binary task's decision threshold is tuned there on request
    (``task.threshold``); both are kept in the checkpoint (``calibration.json``,
    ``thresholds.json``) and applied by :meth:`predictions`.
    """

    problem: ClassVar[str] = "classification"
    Config: ClassVar[type[StrictConfig]] = SingleLabelConfig
    #: The temperature the logits are divided by (1: uncalibrated).
    temperature: float = 1.0
    #: A binary task's decision: (positive class index, threshold), or None (arg-max).
    decision: tuple[int, float] | None = None
    #: The class names in label-id order, once known (after validation, or the model built).
    class_names: list[str] | None = None

    def bind_classes(self, classes: list[Any]) -> None:
        """Check ``task.threshold`` / ``task.positive_class`` against the classes and start
        from an uncalibrated state (the fixed threshold, if any, applies from the start)."""
        names = [str(c) for c in classes]
        self.class_names, self.temperature, self.decision = names, 1.0, None
        cfg = self.config
        if cfg.threshold is None:
            if cfg.positive_class is not None:
                raise ConfigError("task.positive_class", "is for task.threshold: set one too")
            return
        if len(names) != 2:
            raise ConfigError(
                "task.threshold",
                f"is for two classes; the data has {len(names)} ({short(names)})",
            )
        positive = self.positive_index()
        if isinstance(cfg.threshold, float):
            self.decision = (positive, cfg.threshold)

    def positive_index(self) -> int:
        """The output index of ``task.positive_class`` (default 1: the second class)."""
        names = self.class_names or []
        wanted = self.config.positive_class
        if wanted is None:
            return 1
        if str(wanted) not in names:
            raise ConfigError(
                "task.positive_class", f"{short(wanted)} is not one of the classes {short(names)}"
            )
        return names.index(str(wanted))

    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows``: class ids (int64)."""
        return label_ids(data, rows)

    def output_names(self, data: TaskData) -> list[str]:
        """One output per class, in label-id order."""
        self.bind_classes(list(data.classes or []))
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
        self.bind_classes(list(data.classes or []))
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
        """Logits -> (predicted class ids, class probabilities): ``softmax(logits / T)`` with
        the checkpoint's temperature; the likelier class, or for a binary task with a decision
        threshold the positive class when its probability reaches it."""
        import torch

        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        y_pred = probs.argmax(dim=-1).numpy()
        if self.decision is not None and probs.shape[-1] == 2:
            positive, threshold = self.decision
            y_pred = np.where(probs[:, positive].numpy() >= threshold, positive, 1 - positive)
        return y_pred, probs.numpy()

    def after_training(self, predict_val: Any, folder: Path) -> dict[str, Any]:
        """Temperature scaling on the validation logits (``task.calibration``), then a binary
        task's threshold on the calibrated probabilities (``task.threshold``); both written
        into the checkpoint and recorded under ``tuning`` (``calibration``, ``threshold``)."""
        from tuneforge.plugins.calibration import single_label_after_training

        return single_label_after_training(self, predict_val, folder)

    def ensemble_outputs(self, outputs: list[Any], folders: list[Path]) -> Any:
        """The mean of the members' calibrated logits (each over its own temperature)."""
        from tuneforge.plugins.calibration import ensemble_calibrated

        return ensemble_calibrated(outputs, folders, self.temperature)

    def load_artifacts(self, folder: Path) -> Any:
        """The modality's model, with the checkpoint's temperature (``calibration.json``) and
        binary decision threshold (``thresholds.json``) when it has them."""
        from tuneforge.plugins.calibration import read_temperature
        from tuneforge.plugins.thresholds import read_binary

        model = super().load_artifacts(folder)  # type: ignore[safe-super]
        self.temperature, self.decision = read_temperature(folder), read_binary(folder)
        return model

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
        details = {
            "per_class": per_class,
            "confusion_matrix": {"classes": names, "counts": counts.astype(int).tolist()},
        }
        if self.config.calibration != "none":  # ECE and NLL without and with the temperature
            from tuneforge.plugins.calibration import figures

            details["calibration"] = {
                "temperature": self.temperature,
                **figures(logits, y_true, self.temperature, "softmax"),
            }
        return details

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
