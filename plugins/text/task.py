"""The text-classification task: one text column (or a pair) and a label column."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from tuneforge.components import ModelSpec, StrictConfig, Task
from tuneforge.data import TaskData, WorkerRandom, read_table, require_columns, resolve_classes
from tuneforge.errors import ConfigError, DataError, short
from tuneforge.plugins.problems import SingleLabelClassification, SingleLabelConfig

_NORM = re.compile(r"\W+")

#: Text cells are cut to this many characters before preprocessing and tokenization (the
#: ``long-text`` validator names the rows): far more than any ``tokenizer.max_length`` reads,
#: and a bound on the per-row work of every step after loading.
MAX_TEXT_CHARS = 1_000_000
#: Characters of a text ``tuneforge validate --show-augmented`` shows (a bounded repr).
PREVIEW_CHARS = 240


class TextDataset:
    """Map-style dataset of tokenized texts.

    Without augmenters every text is tokenized once, up front. With augmenters the raw text
    is augmented and tokenized per access, so each epoch sees new variants. A tokenizer with
    ``report_truncation(texts, pairs)`` reports once how many texts it truncates (counted on
    the texts before augmentation).
    """

    def __init__(
        self,
        texts: list[str],
        pairs: list[str] | None,
        labels: np.ndarray | None,
        tokenizer: Any,
        augmenters: list[Any],
        seed: int,
        report_truncation: bool = True,
    ) -> None:
        self.texts, self.pairs, self.labels = texts, pairs, labels
        self.tokenizer, self.augmenters = tokenizer, augmenters
        self._rngs = WorkerRandom(seed)  # reseeded in each loader worker, as images and tables
        report = getattr(tokenizer, "report_truncation", None) if report_truncation else None
        if report is not None:  # once per dataset (augmented rows are encoded one by one)
            report(texts, pairs)
        self.encoded = None if augmenters else tokenizer.encode(texts, pairs)
        self._lengths: list[int] | None = None
        if self.encoded is not None:
            empty = [i for i, ids in enumerate(self.encoded["input_ids"]) if not ids]
            if empty:
                raise DataError(
                    f"the tokenizer produced no tokens for {len(empty)} texts (first: "
                    f"{short(texts[empty[0]])}); "
                    "check tokenizer.checkpoint or drop such rows"
                )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> list[int]:
        """Tokens per example (for ``trainer.group_by_length``), computed once when first asked.

        Pre-tokenized: the encoded lengths. With augmenters: the lengths of the texts before
        augmentation, capped at the tokenizer's ``max_length`` (augmenters change them a little).
        """
        if self._lengths is None:
            if self.encoded is not None:
                self._lengths = [len(ids) for ids in self.encoded["input_ids"]]
            elif hasattr(self.tokenizer, "lengths"):
                cap = getattr(getattr(self.tokenizer, "config", None), "max_length", None)
                found = self.tokenizer.lengths(self.texts, self.pairs)
                self._lengths = [min(n, cap) if cap else n for n in found]
            else:
                self._lengths = [len(t.split()) for t in self.texts]
        return self._lengths

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.encoded is not None:
            item = {k: v[i] for k, v in self.encoded.items()}
        else:
            example = self.example(i)
            pair = [example["text_pair"]] if self.pairs is not None else None
            item = {k: v[0] for k, v in self.tokenizer.encode([example["text"]], pair).items()}
        if self.labels is not None:  # a class id, a 0/1 label row, or float target(s)
            label = self.labels[i]
            item["labels"] = label.tolist() if np.ndim(label) else label.item()
        return item

    def example(self, i: int) -> dict[str, Any]:
        """Example ``i`` before tokenization: ``{"text": ..., "text_pair": ...}`` (the text after
        the preprocessors), through each augmenter in turn with the dataset's seeded RNG."""
        example = {"text": self.texts[i]}
        if self.pairs is not None:
            example["text_pair"] = self.pairs[i]
        rng = self._rngs.get()
        for aug in self.augmenters:
            example = aug(example, rng)
        return example


class TextTask(Task):
    """The text modality, for any problem kind: a text (role ``text``) or a pair (``text`` +
    ``text_pair``) per row, cleaned by the run's ``preprocessors`` and tokenized by its
    ``tokenizer`` (``hf-tokenizer``). A problem kind (a base listed first) provides
    :meth:`encode_labels` and :meth:`output_names`; the model is built with
    ``spec.inputs = {"tokenizer", "vocab_size", "pad_token_id"}``."""

    roles: ClassVar[dict[str, str]] = {"text": "text", "text_pair": "text"}
    #: The training rows :meth:`fit` got and ``trainer.seed`` (from :meth:`make_dataset`), for
    #: :meth:`ModelBuilder.fit_before_training`.
    _fit_rows: np.ndarray | None = None
    _seed: int = 0
    #: :meth:`frozen_features`' cache (a :class:`~tuneforge.plugins.text.embeddings.EmbeddingCache`).
    _embeddings: Any = None

    class Config(StrictConfig):
        pass

    # -- loading --------------------------------------------------------------------------
    def _columns(self, data_config: Any) -> dict[str, str]:
        columns = dict(data_config.columns) or {"text": "text"}
        for role in columns:
            if role not in self.roles:
                raise ConfigError(
                    f"data.columns.{role}",
                    f"unknown role; {self.name} uses: {', '.join(self.roles)}",
                )
        if "text" not in columns:
            raise ConfigError("data.columns.text", "missing: name the column that holds the text")
        return columns

    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows`` (the problem kind's encoding)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    def output_names(self, data: TaskData) -> list[str]:
        """The model's outputs, in order (the problem kind's classes, labels or targets)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    def task_data(
        self, frame: pd.DataFrame, columns: dict[str, str], target: Any, classes: Any, path: Path
    ) -> TaskData:
        """The loaded data of a text task: ``columns`` are the input roles' columns."""
        return TaskData(
            frame=frame,
            inputs=columns,
            target=target,
            classes=classes,
            source=str(path),
            problem=self.problem,
            modalities={r: self.roles[r] for r in columns},
        )

    def classification_defaults(self) -> dict[str, Any]:
        """The validators, preprocessing and model the classification tasks of this modality
        (single- and multi-label) use when the config names none."""
        return {
            "validators": [
                "schema",
                "missing",
                "empty-text",
                "long-text",
                "duplicates",
                "conflicting-labels",
                "class-size",
            ],
            "tokenizer": {"name": "hf-tokenizer"},
            "model": {"name": "hf-sequence-classification"},
        }

    @staticmethod
    def _path(data_config: Any, base_dir: Path) -> Path:
        path = Path(data_config.path)
        return path if path.is_absolute() else base_dir / path

    def load_inputs(self, path: Path, data_config: Any) -> pd.DataFrame:
        """Read a file to predict on: the same input columns; the label is optional."""
        # The input's format comes from its suffix; reader options carry over from training.
        frame = read_table(path, "auto", data_config.read_options)
        columns = self._columns(data_config)
        require_columns(frame, {f"data.columns.{r}": c for r, c in columns.items()}, path)
        for role, col in columns.items():
            bad = frame.index[frame[col].isna()]
            if len(bad):
                raise DataError(f"{path}: row {int(bad[0])}: column {col!r} ({role}) is empty")
            lengths = frame[col].astype(str).str.len()
            long = [int(r) for r in frame.index[lengths > MAX_TEXT_CHARS]]
            if long:
                shown = ", ".join(map(str, long[:5])) + (
                    f", ... ({len(long)} in all)" if len(long) > 5 else ""
                )
                print(
                    f"tuneforge: warning: {path}: {len(long)} texts in column {col!r} are longer "
                    f"than {MAX_TEXT_CHARS:,} characters; only their first {MAX_TEXT_CHARS:,} are "
                    f"read: rows {shown}",
                    file=sys.stderr,
                    flush=True,
                )
        return frame

    def content_keys(self, data: TaskData) -> pd.Series:
        """Normalised input text: rows with equal keys are duplicates (kept in one split)."""
        cols = [data.inputs[r] for r in ("text", "text_pair") if r in data.inputs]
        key = data.frame[cols[0]].astype(str)
        for col in cols[1:]:
            key = key + "\x1f" + data.frame[col].astype(str)
        return key.str.lower().map(lambda s: _NORM.sub(" ", s).strip())

    # -- training -------------------------------------------------------------------------
    def fit(self, data: TaskData, train_rows: np.ndarray) -> None:
        """Keep the training rows for :meth:`ModelBuilder.fit_before_training`."""
        super().fit(data, train_rows)
        self._fit_rows = np.asarray(train_rows)

    def prepare(self) -> None:
        """The tokenizer of the model's checkpoint unless ``tokenizer.checkpoint`` names one."""
        from tuneforge.plugins.text.hf import HFSequenceClassification, HFTokenizer
        from tuneforge.plugins.text.setfit_model import SetFit

        tokenizer, model_builder = self.tokenizer, self.model_builder
        tokenizer.setup(default_checkpoint=model_builder.checkpoint_path())
        if isinstance(tokenizer, HFTokenizer) and isinstance(
            model_builder, (HFSequenceClassification, SetFit)
        ):  # a longer max_length would overrun the position embeddings mid-training
            tokenizer.fit_to_model(model_builder.max_positions())

    def _texts(self, frame: pd.DataFrame, inputs: dict[str, str], preprocessors: list[Any]):
        def clean(col: str) -> list[str]:
            # Bounded per-row work from here on: no step reads past MAX_TEXT_CHARS characters.
            values = [v[:MAX_TEXT_CHARS] for v in frame[col].astype(str).tolist()]
            for pre in preprocessors:
                values = [pre(v) for v in values]
            return values

        texts = clean(inputs["text"])
        pairs = clean(inputs["text_pair"]) if "text_pair" in inputs else None
        return texts, pairs

    def make_dataset(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int
    ) -> TextDataset:
        frame = data.frame.loc[rows]
        texts, pairs = self._texts(frame, data.inputs, self.preprocessors)
        labels = self.encode_labels(data, rows)
        self._seed = seed  # trainer.seed, for ModelBuilder.fit_before_training
        return TextDataset(texts, pairs, labels, self.tokenizer, augmenters, seed)

    def collate_fn(self, on_cuda: bool) -> Any:
        return self.tokenizer.collator(pad_to_multiple_of=8 if on_cuda else None)

    def frozen_features(self, data: TaskData, rows: np.ndarray) -> np.ndarray | None:
        """Mean-pooled, L2-normalised embeddings of ``rows`` (their text after the
        preprocessors; a pair encoded as one sequence, ``text [SEP] pair``) by the model's
        sentence encoder (:meth:`ModelBuilder.sentence_encoder`), cached per row; None when
        the model has none."""
        encoder = self.model_builder.sentence_encoder() if self.model_builder else None
        if encoder is None:
            return None
        from tuneforge.plugins.text.embeddings import EmbeddingCache

        if self._embeddings is None:
            self._embeddings = EmbeddingCache()
        texts, pairs = self._texts(data.frame.loc[rows], data.inputs, self.preprocessors)
        return self._embeddings.features(encoder, rows, texts, pairs)

    def model_inputs(self) -> dict[str, Any]:
        """``ModelSpec.inputs``: the transformers tokenizer, its vocabulary size and pad id."""
        from tuneforge.plugins.text.hf import HFTokenizer

        tok = self.tokenizer.tokenizer
        inputs = {"tokenizer": tok, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
        if isinstance(self.tokenizer, HFTokenizer):
            inputs["max_length"] = self.tokenizer.config.max_length
        return inputs

    def build_model(self, data: TaskData) -> Any:
        """The builder's model, then :meth:`ModelBuilder.fit_before_training` on the rows
        :meth:`fit` kept (the training split, before balancing and augmentation)."""
        names = self.output_names(data)
        spec = ModelSpec(self.problem, len(names), names, self.model_inputs())
        model = self.model_builder.build(spec)
        rows = self._fit_rows
        if rows is not None and len(rows):
            texts, pairs = self._texts(data.frame.loc[rows], data.inputs, self.preprocessors)
            examples: dict[str, list[Any]] = {"text": texts}
            if pairs is not None:
                examples["text_pair"] = pairs
            labels = self.encode_labels(data, rows)
            self.model_builder.fit_before_training(model, examples, labels, self._seed)
        return model

    # -- artifacts ------------------------------------------------------------------------
    def save_artifacts(self, model: Any, folder: Path) -> None:
        self.model_builder.save(model, folder)
        self.tokenizer.save(folder)

    def load_artifacts(self, folder: Path) -> Any:
        from tuneforge.plugins.text.hf import HFSequenceClassification, HFTokenizer, position_limit
        from tuneforge.plugins.text.setfit_model import SetFit

        tokenizer, model_builder = self.tokenizer, self.model_builder
        tokenizer.load(str(folder), key=f"checkpoint {folder}")
        model = model_builder.load(folder)
        if isinstance(tokenizer, HFTokenizer) and isinstance(
            model_builder, HFSequenceClassification
        ):  # a transformers model: its config.json says its token limit
            tokenizer.fit_to_model(position_limit(model.config), warn=False)
        if isinstance(tokenizer, HFTokenizer) and isinstance(model_builder, SetFit):
            tokenizer.fit_to_model(model.body.max_seq_length, warn=False)  # what it trained on
        return model

    def predict_dataset(
        self, frame: pd.DataFrame, data_config: Any, report_truncation: bool = True
    ) -> TextDataset:
        """Unlabelled examples from a frame read by :meth:`load_inputs`; the truncated
        texts are counted on stderr unless ``report_truncation`` is false (a second look at
        rows already counted, as the run end's explanations of test rows)."""
        texts, pairs = self._texts(frame, self._columns(data_config), self.preprocessors)
        return TextDataset(texts, pairs, None, self.tokenizer, [], 0, report_truncation)

    # -- explanations -----------------------------------------------------------------------
    def explain(self, model: Any, frame: pd.DataFrame, data_config: Any, options: Any) -> Any:
        """Token attributions by Integrated Gradients on the model's input embeddings, for
        the first ``options.rows`` rows (:mod:`tuneforge.plugins.text.explain`)."""
        from tuneforge.plugins.text.explain import explain_text

        return explain_text(self, model, frame, data_config, options)

    # -- export -----------------------------------------------------------------------------
    def export_axes(self, batch: dict[str, Any]) -> dict[str, dict[int, str]]:
        """The batch axis of every input and the sequence axis of the token inputs (2-D)."""
        return {
            name: {0: "batch", 1: "sequence"} if value.ndim == 2 else {0: "batch"}
            for name, value in batch.items()
        }

    def export_preprocessing(self, folder: Path, out: Path) -> dict[str, Any]:
        """The checkpoint's files but the weights (the tokenizer's among them), and the
        tokenizer's ``max_length`` and ``truncation``, which its files do not hold."""
        from tuneforge.plugins.text.hf import HFTokenizer

        record = super().export_preprocessing(folder, out)
        if isinstance(self.tokenizer, HFTokenizer):
            cfg = self.tokenizer.config
            record.update(max_length=cfg.max_length, truncation=cfg.truncation)
        return record

    # -- augmentation preview ---------------------------------------------------------------
    def preview_augmented(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int, folder: Path
    ) -> list[str]:
        """Each example's text (and pair) after the preprocessors, then as the augmenters of
        the training dataset leave it: what the tokenizer gets in training. Writes no files."""
        dataset = self.make_dataset(data, rows, augmenters, seed)
        if not isinstance(dataset, TextDataset):  # a subclass with a dataset of its own
            return super().preview_augmented(data, rows, augmenters, seed, folder)
        lines = []
        for i, row in enumerate(rows):
            after = dataset.example(i)
            before = {"text": dataset.texts[i]}
            if dataset.pairs is not None:
                before["text_pair"] = dataset.pairs[i]
            for role, text in before.items():
                head = f"row {int(row)} "
                new = after.get(role)
                shown = "(unchanged)" if new == text else short(new, PREVIEW_CHARS)
                lines.append(f"{head}{role + ':':<11}{short(text, PREVIEW_CHARS)}")
                lines.append(f"{' ' * len(head)}{'augmented:':<11}{shown}")
        return lines


class TextClassificationTask(SingleLabelClassification, TextTask):
    """Classify a text (role ``text``) or a pair (``text`` + ``text_pair``) into one class of
    ``data.label``."""

    name = "text-classification"
    #: The embedding baseline's record for :meth:`test_details` (set by :meth:`baselines`).
    _embedding_record: dict[str, Any] | None = None

    class Config(SingleLabelConfig):  # calibration, threshold, positive_class, and:
        embedding_baseline: bool = Field(
            True,
            description="report the embedding baseline (frozen sentence-encoder embeddings + "
            "logistic regression) when the model starts from a sentence encoder",
        )

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        if data_config.target is not None:
            raise ConfigError("data.target", f"{self.name} takes its classes from data.label")
        path = self._path(data_config, base_dir)
        frame = read_table(path, data_config.format, data_config.read_options)
        columns = self._columns(data_config)
        label = data_config.label or "label"
        wanted = {f"data.columns.{r}": c for r, c in columns.items()}
        wanted["data.label"] = label
        require_columns(frame, wanted, path)
        if len(frame) == 0:
            raise DataError(f"{path}: the file has no data rows")
        classes = resolve_classes(frame, label, data_config.classes, path)
        return self.task_data(frame, columns, label, classes, path)

    def defaults(self) -> dict[str, Any]:
        return {
            **self.classification_defaults(),
            "metrics": [
                *("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"),
                *("mcc", "roc_auc", "log_loss", "ece"),
            ],
        }

    def baselines(self, data: TaskData, split: Any, metrics: dict[str, Any]) -> dict[str, float]:
        """The majority baseline and, when the model starts from a sentence encoder,
        ``embedding_baseline_<metric>`` for every metric: frozen embeddings + logistic
        regression fitted on train (its validation scores are in ``test_details``)."""
        out = super().baselines(data, split, metrics)
        self._embedding_record = None
        if self.config.embedding_baseline:
            from tuneforge.plugins.text.embeddings import embedding_baseline

            scores, record = embedding_baseline(self, data, split, metrics)
            out.update(scores)
            self._embedding_record = record or None
        return out

    def test_details(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> dict[str, Any]:
        """The per-class table and confusion matrix, and ``embedding_baseline``: the
        embedding baseline's encoder and its validation and test scores."""
        details = super().test_details(data, rows, logits, labels)
        if self._embedding_record:
            details["embedding_baseline"] = self._embedding_record
        return details
