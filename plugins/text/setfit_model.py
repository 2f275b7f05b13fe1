"""The ``setfit`` model: SetFit (Tunstall et al. 2022) on a sentence-transformers body.

How it fits tuneforge's training contract:

1. **Contrastive phase** (:meth:`SetFit.fit_before_training`, called by the text task once the
   model is built, with the training split's texts and labels only): the body is fine-tuned on
   positive / negative pairs of training texts with sentence-transformers'
   ``CosineSimilarityLoss``, the pairs drawn by setfit's own ``ContrastiveDataset`` (setfit's
   default loss and sampler), ``num_iterations`` positive and negative pairs per example, at
   most ``max_pairs`` in all, in a seeded order (``trainer.seed``).
2. **Head initialisation**: a logistic regression on the (tuned) body's embeddings of the
   training texts, setfit's default head, copied into setfit's differentiable ``SetFitHead``
   (a linear layer + softmax is exactly a multinomial logistic regression).
3. **tuneforge's training loop**: the wrapper :class:`SetFitClassifier` (body + head, forward
   ``(input_ids, attention_mask, token_type_ids) -> logits``) trains end to end at
   ``trainer.lr`` (setfit's ``end_to_end``), or only its head when ``freeze_body: true``; so
   metrics, early stopping, checkpoints and the report work as for any model.

``freeze_body: true`` keeps the pretrained encoder as it is (no contrastive phase, the body
frozen in the loop): frozen embeddings + a trained head, "the embedding model".

The checkpoint folder is a setfit model (``SetFitModel.from_pretrained(folder)`` loads it and
predicts the same classes) plus ``setfit_head.safetensors`` and ``setfit_tuneforge.json``, from
which :meth:`SetFit.load` restores the model without unpickling anything (setfit's own
``model_head.pkl`` is a joblib pickle, written for setfit only).

torch, sentence-transformers and setfit are imported inside methods.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tuneforge.components import ModelBuilder, ModelSpec, StrictConfig
from tuneforge.errors import ConfigError, UserError

#: The tuneforge side of a setfit checkpoint (labels, head shape, max length).
META_FILE = "setfit_tuneforge.json"
#: The head's weights, for :meth:`SetFit.load` (never the pickle).
HEAD_FILE = "setfit_head.safetensors"
#: Problem kinds the model serves.
PROBLEMS = ("classification", "multilabel")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _require_setfit() -> None:
    try:
        import sentence_transformers  # noqa: F401
        import setfit  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.name",
            "setfit needs the packages 'setfit' and 'sentence-transformers' "
            "(pip install 'tuneforge[setfit]')",
        ) from None


def _say(message: str) -> None:
    print(f"tuneforge: setfit: {message}", file=sys.stderr, flush=True)


@functools.cache
def _classifier_class() -> type:
    """:class:`SetFitClassifier`, defined on first use (torch is imported here, not at start-up)."""
    import torch

    class SetFitClassifier(torch.nn.Module):
        """A setfit model as a ``torch.nn.Module``: the sentence-transformers ``body`` (its own
        modules: transformer, mean pooling, normalisation) and setfit's ``head``; forward
        returns the head's logits."""

        def __init__(self, body: Any, head: Any, labels: list[str], multitarget: bool) -> None:
            super().__init__()
            self.body = body
            self.head = head
            self.labels = list(labels)
            self.multitarget = multitarget
            self.frozen_body = False

        def forward(
            self,
            input_ids: Any,
            attention_mask: Any = None,
            token_type_ids: Any = None,
        ) -> Any:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            embeddings = self.body(features)["sentence_embedding"]
            logits, _ = self.head(embeddings)
            return logits

        def freeze_body(self) -> None:
            """No gradient into the body, and the body stays in eval mode (no dropout)."""
            self.frozen_body = True
            for p in self.body.parameters():
                p.requires_grad_(False)
            self.body.eval()

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            if self.frozen_body:
                self.body.eval()
            return self

    SetFitClassifier.__module__ = __name__
    SetFitClassifier.__qualname__ = "SetFitClassifier"
    return SetFitClassifier


class SetFit(ModelBuilder):
    """SetFit: contrastive fine-tuning of a sentence-transformers body, then a classification
    head, trained further by tuneforge's loop (see the module docstring)."""

    class Config(StrictConfig):
        checkpoint: str = Field(
            "minilm-l6",
            description="sentence-transformers body: offline package name (minilm-l6), local "
            "folder or hub id",
        )
        num_iterations: int = Field(
            20,
            ge=0,
            le=1000,
            strict=True,
            description="contrastive pairs per training example and kind (positive, negative); "
            "0: no contrastive phase",
        )
        max_pairs: int | None = Field(
            4000,
            ge=2,
            strict=True,
            description="at most this many contrastive pairs in all (bounds the phase's time); "
            "null: num_iterations x examples x 2",
        )
        contrastive_epochs: int = Field(
            1, ge=1, le=100, strict=True, description="passes over the contrastive pairs"
        )
        contrastive_batch_size: int = Field(
            16, ge=1, le=4096, strict=True, description="pairs per contrastive step"
        )
        body_learning_rate: float = Field(
            2e-5, gt=0, le=1, description="learning rate of the contrastive phase (AdamW)"
        )
        freeze_body: bool = Field(
            False,
            description="keep the pretrained encoder unchanged (no contrastive phase, body "
            "frozen in training): frozen embeddings + a trained head",
        )
        head_init: Literal["logistic", "random"] = Field(
            "logistic",
            description="logistic: the head starts as a logistic regression fitted on the "
            "training embeddings (setfit's default head); random: setfit's random init",
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._problem = "classification"

    # -- contract -------------------------------------------------------------------------
    def checkpoint_path(self) -> str:
        from tuneforge.plugins.text.hf import resolve_checkpoint

        return resolve_checkpoint(self.config.checkpoint, "model.checkpoint")

    def sentence_encoder(self) -> str | None:
        """The body's folder: a sentence-transformers checkpoint (mean pooling)."""
        return self.checkpoint_path()

    def max_positions(self) -> int | None:
        """The body's token limit: its position embeddings (config.json)."""
        from transformers import AutoConfig

        from tuneforge.plugins.text.hf import position_limit

        path = self.checkpoint_path()
        try:
            return position_limit(AutoConfig.from_pretrained(path))
        except (OSError, ValueError) as exc:
            raise UserError(f"model.checkpoint: cannot load {path}: {_first_line(exc)}") from None

    def parameter_depths(self, model: Any) -> dict[str, int] | None:
        """The body's transformer depths (embeddings 0, blocks ``1..L``); the head ``L + 1``
        (:func:`tuneforge.plugins.layers.hf_parameter_depths` on the whole model)."""
        from tuneforge.plugins.layers import hf_parameter_depths

        return hf_parameter_depths(model)

    def build(self, spec: ModelSpec) -> Any:
        """The body from ``checkpoint`` and a new ``SetFitHead`` of ``spec.n_outputs``.

        The body truncates at the task tokenizer's ``max_length`` (``spec.inputs``), so setfit's
        own ``predict`` on the saved folder reads what training read.
        """
        if spec.problem not in PROBLEMS:
            raise ConfigError(
                "model.name",
                f"setfit classifies texts (single- or multi-label); this task's problem is "
                f"{spec.problem}: use hf-sequence-classification",
            )
        if spec.problem == "multilabel" and spec.n_outputs < 2:
            raise ConfigError("model.name", "setfit needs at least 2 labels for a multi-label task")
        _require_setfit()
        from setfit import SetFitHead

        body = self._load_body(self.checkpoint_path(), "model.checkpoint")
        tokenizer = spec.inputs.get("tokenizer")
        if tokenizer is not None and tokenizer.get_vocab() != body.tokenizer.get_vocab():
            raise ConfigError(
                "tokenizer.checkpoint",
                f"setfit tokenizes with its body's tokenizer ({self.config.checkpoint}); "
                "leave tokenizer.checkpoint unset",
            )
        max_length = spec.inputs.get("max_length")
        if isinstance(max_length, int) and max_length > 0:
            body.max_seq_length = max_length
        self._problem = spec.problem
        multitarget = spec.problem == "multilabel"
        dimension = getattr(body, "get_embedding_dimension", None)  # sentence-transformers 6
        head = SetFitHead(
            in_features=(dimension or body.get_sentence_embedding_dimension)(),
            out_features=spec.n_outputs,
            device="cpu",
            multitarget=multitarget,
        )
        model = _classifier_class()(body, head, spec.output_names, multitarget)
        if self.config.freeze_body:
            model.freeze_body()
        return model

    def fit_before_training(
        self, model: Any, examples: dict[str, list[Any]], labels: Any, seed: int
    ) -> None:
        """The contrastive phase on the training texts, then the head's logistic-regression
        initialisation (see the module docstring)."""
        import numpy as np

        if "text_pair" in examples:
            raise ConfigError(
                "data.columns.text_pair",
                "setfit embeds single texts; use hf-sequence-classification for text pairs",
            )
        texts = [str(t) for t in examples["text"]]
        labels = np.asarray(labels)
        if not texts:
            return
        if self.config.freeze_body:
            _say("freeze_body: the pretrained encoder is kept as it is (no contrastive phase)")
        elif self.config.num_iterations > 0:
            self._contrastive(model, texts, labels, seed)
        if self.config.head_init == "logistic":
            self._init_head(model, texts, labels, seed)

    def save(self, model: Any, folder: Path) -> None:
        """A setfit folder (``SetFitModel.save_pretrained``) and the head as safetensors."""
        from safetensors.torch import save_file
        from setfit import SetFitModel

        from tuneforge.plugins.text.hf import quiet_transformers

        quiet_transformers()
        head = copy.deepcopy(model.head).to("cpu")
        setfit_model = SetFitModel(
            model_body=model.body,
            model_head=head,
            multi_target_strategy="one-vs-rest" if model.multitarget else None,
            normalize_embeddings=False,  # the body's own Normalize module does it
            labels=list(model.labels),
        )
        folder = Path(folder)
        setfit_model.save_pretrained(str(folder))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in head.linear.state_dict().items()},
            str(folder / HEAD_FILE),
        )
        meta = {
            "format": "tuneforge-setfit/1",
            "labels": list(model.labels),
            "multitarget": bool(model.multitarget),
            "in_features": int(head.linear.in_features),
            "out_features": int(head.linear.out_features),
            "temperature": float(head.temperature),
            "bias": head.linear.bias is not None,
            "max_seq_length": model.body.max_seq_length,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, folder: Path) -> Any:
        """The wrapper from the body's files and ``setfit_head.safetensors`` (no pickle)."""
        _require_setfit()
        from safetensors.torch import load_file
        from setfit import SetFitHead

        folder = Path(folder)
        key = f"checkpoint {folder}"
        try:
            meta = json.loads((folder / META_FILE).read_text())
            labels, multitarget = list(meta["labels"]), bool(meta["multitarget"])
            shape = int(meta["in_features"]), int(meta["out_features"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{key}: not a tuneforge setfit checkpoint ({META_FILE}: {exc})"
            ) from None
        body = self._load_body(str(folder), key)
        head = SetFitHead(
            in_features=shape[0],
            out_features=shape[1],
            temperature=float(meta.get("temperature", 1.0)),
            bias=bool(meta.get("bias", True)),
            device="cpu",
            multitarget=multitarget,
        )
        try:
            head.linear.load_state_dict(load_file(str(folder / HEAD_FILE)))
        except Exception as exc:  # missing, corrupt or mis-shaped head weights
            raise UserError(f"{key}: cannot load {HEAD_FILE}: {_first_line(exc)}") from None
        if len(labels) != shape[1]:
            raise UserError(f"{key}: {META_FILE} names {len(labels)} labels for {shape[1]} outputs")
        model = _classifier_class()(body, head, labels, multitarget)
        if self.config.freeze_body:
            model.freeze_body()
        return model

    # -- phases ---------------------------------------------------------------------------
    @staticmethod
    def _load_body(path: str, key: str) -> Any:
        """A ``SentenceTransformer`` from ``path``; its modules must be sentence-transformers'
        own (modules.json names the classes it imports)."""
        from sentence_transformers import SentenceTransformer

        from tuneforge.plugins.text.hf import quiet_transformers

        quiet_transformers()
        modules = Path(path) / "modules.json"
        if modules.is_file():
            try:
                types = [str(m.get("type", "")) for m in json.loads(modules.read_text())]
            except (ValueError, AttributeError, TypeError) as exc:
                raise UserError(f"{key}: {modules} is not valid: {exc}") from None
            odd = [t for t in types if not t.startswith("sentence_transformers.")]
            if odd:
                raise UserError(
                    f"{key}: {modules} names modules outside sentence-transformers ({odd[0]}); "
                    "tuneforge loads only sentence-transformers' own modules"
                )
        try:
            return SentenceTransformer(str(path), device="cpu", trust_remote_code=False)
        except Exception as exc:  # missing or corrupt files raise library-specific errors
            raise UserError(
                f"{key}: cannot load a sentence-transformers model from {path}: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None

    def _pairs(self, texts: list[str], labels: Any, seed: int) -> list[dict[str, Any]]:
        """setfit's contrastive pairs, in a seeded order, at most ``max_pairs``."""
        import numpy as np
        from setfit.sampler import ContrastiveDataset

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))  # setfit's own shuffle is fixed (seed 42)
        multilabel = self._problem == "multilabel"
        y = [labels[i].tolist() if multilabel else int(labels[i]) for i in order]
        cap = self.config.max_pairs
        data = ContrastiveDataset(
            [texts[i] for i in order],
            y,
            multilabel,
            num_iterations=self.config.num_iterations,
            max_pairs=-1 if cap is None else cap,
        )
        pairs = list(data)  # positive and negative pairs alternate
        if cap is not None:
            pairs = pairs[:cap]
        return [pairs[i] for i in rng.permutation(len(pairs))]

    def _contrastive(self, model: Any, texts: list[str], labels: Any, seed: int) -> None:
        """Fine-tune ``model.body`` on setfit's pairs with ``CosineSimilarityLoss``."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        try:  # sentence-transformers >= 5.4 moved the losses
            from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
        except ImportError:
            from sentence_transformers.losses import CosineSimilarityLoss

        cfg = self.config
        pairs = self._pairs(texts, labels, seed)
        if not pairs:
            return
        body = model.body
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tok, max_length = body.tokenizer, body.max_seq_length
        batch = cfg.contrastive_batch_size
        steps = math.ceil(len(pairs) / batch) * cfg.contrastive_epochs
        start = time.perf_counter()
        _say(
            f"contrastive phase: {len(pairs)} pairs from {len(texts)} texts, "
            f"{steps} steps of {batch} on {device.type}"
        )

        def encode(column: list[str]) -> dict[str, Any]:
            enc = tok(
                column, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            return {k: v.to(device) for k, v in enc.items()}

        devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the trainer's RNG stream is untouched
            torch.manual_seed(seed)
            body.to(device).train()
            loss_fn = CosineSimilarityLoss(body)
            params = [p for p in body.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.body_learning_rate, weight_decay=0.0)
            schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
            last = 0.0
            for _ in range(cfg.contrastive_epochs):
                for i in range(0, len(pairs), batch):
                    chunk = pairs[i : i + batch]
                    features = [
                        encode([p["sentence_1"] for p in chunk]),
                        encode([p["sentence_2"] for p in chunk]),
                    ]
                    target = torch.tensor([p["label"] for p in chunk], device=device)
                    loss = loss_fn(features, target.float())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    last = float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            body.to("cpu").eval()
        _say(f"contrastive phase done in {time.perf_counter() - start:.1f}s (last loss {last:.4f})")

    def _init_head(self, model: Any, texts: list[str], labels: Any, seed: int) -> None:
        """The head as a logistic regression on the body's training embeddings."""
        import numpy as np
        import torch
        from sklearn.linear_model import LogisticRegression

        body = model.body
        was_training = body.training
        body.eval()
        with torch.no_grad():
            x = body.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        body.train(was_training and not model.frozen_body)
        x = np.asarray(x, dtype=np.float64)
        linear = model.head.linear
        n_out, dim = linear.out_features, linear.in_features
        weight = np.zeros((n_out, dim))
        bias = np.zeros(n_out)
        if model.multitarget:
            y = np.asarray(labels).reshape(len(texts), -1)
            for j in range(n_out):
                col = y[:, j].astype(int)
                if col.min() == col.max():  # a label always on or always off in train
                    bias[j] = 4.0 if col[0] else -4.0
                    continue
                lr = LogisticRegression(max_iter=1000, random_state=seed).fit(x, col)
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        else:
            y = np.asarray(labels).astype(int)
            present = np.unique(y)
            if len(present) < 2:
                return  # nothing to fit: setfit's random init stays
            lr = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
            if len(present) == 2:  # one score: softmax over (-z/2, z/2) is sigmoid(z)
                coef = np.vstack([-lr.coef_[0] / 2, lr.coef_[0] / 2])
                icpt = np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
            else:
                coef, icpt = lr.coef_, lr.intercept_
            bias[:] = icpt.min() - 10.0  # classes the training split lacks
            weight[present], bias[present] = coef, icpt
        with torch.no_grad():
            scale = model.head.temperature + model.head.eps  # the head divides its logits by it
            linear.weight.copy_(torch.as_tensor(weight * scale, dtype=linear.weight.dtype))
            if linear.bias is not None:
                linear.bias.copy_(torch.as_tensor(bias * scale, dtype=linear.bias.dtype))
        _say(f"head initialised as a logistic regression on {len(texts)} training embeddings")
