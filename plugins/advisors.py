"""Built-in advisors and the ``tuneforge refine`` command.

Each advisor reads a finished run (history per epoch and per logging step, findings, split
class counts) and, when it sees its problem, returns a :class:`~tuneforge.components.Diagnosis`
with the evidence and a config patch. They judge on training and validation values only.
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import Any, ClassVar

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import Advisor, Command, Diagnosis, FindingKind, StrictConfig
from tuneforge.hookspecs import Register


def _finite(values: list[float]) -> list[tuple[int, float]]:
    return [(i, v) for i, v in enumerate(values) if math.isfinite(v)]


def _section(run: Any, name: str) -> dict[str, Any]:
    value = run.config.get(name)
    return value if isinstance(value, dict) else ({"name": value} if value else {})


def _trainer(run: Any, key: str, default: Any) -> Any:
    value = (run.config.get("trainer") or {}).get(key, default)
    return default if value is None and default is not None else value


def _pretrained(run: Any) -> bool:
    """Whether the run's model started from pretrained weights: the built-in model components
    name them ``checkpoint`` (Hugging Face) or ``weights`` (timm); ``pretrained: false`` wins."""
    model = _section(run, "model")
    if model.get("pretrained") is False:
        return False
    return bool(model.get("checkpoint") or model.get("weights") or model.get("pretrained"))


def _dropout_patch(run: Any, patch: dict[str, Any], reasons: dict[str, str]) -> None:
    """Raise the model's dropout (whichever key its component calls it)."""
    fields = run.fields.get("model", set())
    model = _section(run, "model")
    for key in ("dropout", "drop_rate", "hidden_dropout"):
        if key in fields:
            current = model.get(key)
            current = 0.1 if current is None else float(current)
            patch[f"model.{key}"] = round(min(0.5, max(0.2, current + 0.1)), 3)
            reasons[f"model.{key}"] = "more dropout: the network cannot rely on single units"
            return


def _augment_patch(run: Any, patch: dict[str, Any], reasons: dict[str, str]) -> None:
    """Add an augmenter for the run's modality, or make the existing ones stronger."""
    current = run.config.get("augmenters") or []
    if current:
        stronger, changed = [], False
        for aug in current:
            aug = {"name": aug} if isinstance(aug, str) else dict(aug)
            if isinstance(aug.get("p"), int | float) and aug["p"] < 0.8:
                aug["p"] = round(min(0.8, max(aug["p"] * 1.5, aug["p"] + 0.1)), 3)
                changed = True
            stronger.append(aug)
        if changed:
            patch["augmenters"] = stronger
            reasons["augmenters"] = "stronger augmentation (higher p): more varied training rows"
        return
    preferred = {
        "text": ("token-noise", {"p": 0.3}),
        "tabular": ("gaussian-noise", {}),
        "image": ("mixup", {}),
    }
    for modality in sorted(run.modalities):
        name, params = preferred.get(modality, ("", {}))
        if name and name in run.augmenters:
            patch["augmenters"] = [{"name": name, **params}]
            reasons["augmenters"] = f"add {name} augmentation: the training rows vary every epoch"
            return


def _small_data(run: Any, min_class: int = 50, median_class: int = 100) -> str:
    """The evidence that the training split has few examples per class (the ``small-data``
    advisor's default thresholds), or ""."""
    counts = (run.split.get("class_counts") or {}).get("train") or {}
    sizes = {str(c): int(n) for c, n in counts.items() if int(n) > 0}
    if len(sizes) < 2:
        return ""
    smallest = min(sizes, key=lambda c: sizes[c])
    median = statistics.median(sizes.values())
    if sizes[smallest] >= min_class and median >= median_class:
        return ""
    return (
        f"the smallest training class, {smallest!r}, has {sizes[smallest]} examples and the "
        f"median {median:g} (thresholds {min_class} and {median_class})"
    )


def _layer_patch(
    run: Any, pretrained: bool, patch: dict[str, Any], reasons: dict[str, str]
) -> None:
    """Remedies for a pretrained model with numbered blocks (the HF and timm builders: the
    ones with ``reinit_layers``): layer-wise lr decay, re-initialising the top transformer
    layers (text), LoRA for small data."""
    model_fields = run.fields.get("model", set())
    if not pretrained or "reinit_layers" not in model_fields:
        return
    model = _section(run, "model")
    if (
        "layer_decay" in run.fields.get("trainer", set())
        and _trainer(run, "layer_decay", None) is None
    ):
        patch["trainer.layer_decay"] = 0.8
        reasons["trainer.layer_decay"] = (
            "layer-wise learning-rate decay 0.8: the lower, general layers move less than the "
            "top ones and the new head (ELECTRA, BEiT), so fine-tuning forgets less of the "
            "pretraining"
        )
    small = _small_data(run)
    if small and "peft" in model_fields and not model.get("peft"):
        patch["model.peft"] = {"method": "lora", "r": 8}
        reasons["model.peft"] = (
            f"LoRA: {small}; a few low-rank adapter weights train instead of the whole "
            "network, which so few examples cannot pin down"
        )
        return  # the frozen top layers would stay random: no re-initialisation with LoRA
    reinit = int(model.get("reinit_layers") or 0)
    if run.modalities == {"text"} and not model.get("peft") and reinit < 2:
        patch["model.reinit_layers"] = reinit + 1
        reasons["model.reinit_layers"] = (
            f"re-initialise the top {reinit + 1} transformer layer{'s' if reinit else ''}: "
            "they hold pretraining-task specifics that transfer worst; fresh ones fit the "
            "task with the lower layers' general features (Zhang et al., 2021, few-sample BERT "
            "fine-tuning)"
        )


class Overfitting(Advisor):
    """Validation loss rises (or the monitored metric falls) while training loss keeps falling."""

    class Config(StrictConfig):
        min_epochs: int = Field(3, ge=2, description="epochs needed before judging")
        rise: float = Field(0.1, ge=0, description="relative rise of val loss that counts")

    def diagnose(self, run: Any) -> list[Diagnosis]:
        if len(run.epochs) < self.config.min_epochs:
            return []
        train, val = run.series("train.loss"), run.series("val.loss")
        vals = _finite(val)
        if not vals or not math.isfinite(train[-1]):
            return []
        best, best_val = min(vals, key=lambda p: p[1])
        last = len(run.epochs) - 1
        evidence = ""
        if (
            best < last
            and val[last] > best_val * (1 + self.config.rise) + 1e-6
            and train[last] < train[best]
        ):
            evidence = (
                f"val.loss rose from {best_val:.4f} (epoch {best + 1}) to {val[last]:.4f} "
                f"(epoch {last + 1}) while train.loss fell from {train[best]:.4f} to {train[last]:.4f}"
            )
        monitor = run.monitor
        if not evidence and monitor != "val.loss":
            series = _finite(run.series(monitor))
            if series:
                pick = max if run.mode == "max" else min
                m_best, m_value = pick(series, key=lambda p: p[1])
                m_last = run.series(monitor)[last]
                worse = m_last < m_value - 0.02 if run.mode == "max" else m_last > m_value + 0.02
                if m_best < last and worse and train[last] < train[m_best]:
                    evidence = (
                        f"{monitor} fell from {m_value:.4f} (epoch {m_best + 1}) to {m_last:.4f} "
                        f"(epoch {last + 1}) while train.loss kept falling "
                        f"({train[m_best]:.4f} -> {train[last]:.4f})"
                    )
        if not evidence:
            return []
        gap_best, gap_last = val[best] - train[best], val[last] - train[last]
        if math.isfinite(gap_best) and math.isfinite(gap_last):
            evidence += f"; the val-train loss gap grew from {gap_best:.4f} to {gap_last:.4f}"
        patch: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        _dropout_patch(run, patch, reasons)
        wd = float(_trainer(run, "weight_decay", 0.01))
        patch["trainer.weight_decay"] = round(min(0.3, max(0.05, wd * 5)), 4)
        reasons["trainer.weight_decay"] = "a stronger L2 penalty keeps the weights small"
        # L1 pulls every weight towards zero: right for a network trained from scratch, harmful
        # for pretrained weights (with Adam it erases those the task's gradient does not hold).
        pretrained = _pretrained(run)
        if "l1" in run.fields.get("trainer", set()) and not pretrained:
            l1 = float(_trainer(run, "l1", 0.0) or 0.0)
            patch["trainer.l1"] = 1e-5 if l1 == 0 else min(1e-3, l1 * 10)
            reasons["trainer.l1"] = "an L1 penalty drives unneeded weights to zero"
        if pretrained:
            # Fine-tuning: a smaller step keeps the weights near the pretrained ones, which
            # generalise; small-data fine-tuning guides use 2e-5..5e-5 (Mosbach et al., 2021).
            lr = float(_trainer(run, "lr", 5e-5))
            if lr > 1e-5:
                patch["trainer.lr"] = float(f"{max(lr / 4, 1e-5):.3g}")
                reasons["trainer.lr"] = (
                    "a smaller learning rate keeps the fine-tuned weights nearer the pretrained "
                    "ones, which generalise better than what a small training split teaches"
                )
        _layer_patch(run, pretrained, patch, reasons)
        if _trainer(run, "schedule", "linear") == "constant":
            patch["trainer.schedule"] = "linear"
            reasons["trainer.schedule"] = (
                "a decaying learning rate: late epochs take small steps instead of memorising "
                "the training rows at full speed"
            )
        # Task-agnostic text augmentation (word noise, EDA) does not help pretrained
        # transformers and often hurts (Longpre et al., 2020); it did here on TREC too.
        if not (pretrained and run.modalities == {"text"}):
            _augment_patch(run, patch, reasons)
        patience = _trainer(run, "early_stopping_patience", None)
        # Patience in proportion to the budget: a regularised model learns more slowly and
        # its validation metric is noisier; the best epoch's checkpoint is kept either way.
        wanted = max(3, int(_trainer(run, "epochs", len(run.epochs))) // 3)
        if patience is None or patience > wanted:
            patch["trainer.early_stopping_patience"] = wanted
            reasons["trainer.early_stopping_patience"] = (
                "stop a few epochs after the validation metric peaks instead of training on "
                "(the best epoch's checkpoint is kept either way)"
            )
        return [Diagnosis("overfitting", evidence, patch, reasons)]


class Underfitting(Advisor):
    """Training hardly lowers the loss, or the model is still improving when training ends."""

    class Config(StrictConfig):
        min_drop: float = Field(0.3, gt=0, lt=1, description="relative train-loss drop expected")
        max_epochs: int = Field(100, ge=1, description="never propose more epochs than this")

    def diagnose(self, run: Any) -> list[Diagnosis]:
        train = _finite(run.series("train.loss"))
        if len(train) < 2:
            return []
        first, last = train[0][1], train[-1][1]
        epochs = int(_trainer(run, "epochs", len(run.epochs)))
        lr = float(_trainer(run, "lr", 5e-5))
        stopped_early = bool(run.metrics.get("stopped_early"))
        monitor = _finite(run.series(run.monitor))
        best_epoch = run.metrics.get("best_epoch")
        patch: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        if first > 0 and (first - last) / first < self.config.min_drop:
            evidence = (
                f"train.loss went only from {first:.4f} to {last:.4f} in {len(train)} epochs "
                f"({100 * (first - last) / first:.0f}% lower)"
            )
            patch["trainer.lr"] = float(f"{min(lr * 3, 1e-2):.3g}")
            reasons["trainer.lr"] = "a larger learning rate lets the optimiser make progress"
            patch["trainer.epochs"] = min(self.config.max_epochs, epochs * 2)
            reasons["trainer.epochs"] = "more epochs to fit the training data"
            return [Diagnosis("underfitting", evidence, patch, reasons)]
        if (
            not stopped_early
            and best_epoch == len(run.epochs)
            and len(monitor) >= 3
            and epochs < self.config.max_epochs
        ):
            (_, a), (_, b) = monitor[-3], monitor[-1]
            gain = b - a if run.mode == "max" else a - b
            if gain > 0.005 * max(1.0, abs(a)):
                evidence = (
                    f"{run.monitor} was still improving at the last epoch "
                    f"({a:.4f} -> {b:.4f} over the last 2 epochs; best epoch = last)"
                )
                patch["trainer.epochs"] = min(self.config.max_epochs, epochs * 2)
                reasons["trainer.epochs"] = "training ended before the validation metric peaked"
                return [Diagnosis("underfitting", evidence, patch, reasons, severity="info")]
        return []


class Divergence(Advisor):
    """NaN/inf losses, a run that failed by diverging, or loss spikes during training."""

    class Config(StrictConfig):
        spike: float = Field(3.0, gt=1, description="a step loss this many times the median so far")

    def diagnose(self, run: Any) -> list[Diagnosis]:
        lr = float(_trainer(run, "lr", 5e-5))
        losses = [s.get("train.loss", math.nan) for s in run.steps]
        epoch_losses = run.series("train.loss") + run.series("val.loss")
        evidence = ""
        factor = 3.0
        if run.status == "failed" and ("diverged" in run.error or "nan" in run.error.lower()):
            evidence, factor = f"the run failed: {run.error}", 10.0
        elif any(not math.isfinite(v) for v in losses + epoch_losses if v is not None):
            evidence, factor = "the loss became NaN or infinite during training", 10.0
        else:
            start = max(3, len(losses) // 5)
            for i in range(start, len(losses)):
                median = statistics.median(losses[:i])
                if median > 0 and losses[i] > self.config.spike * median:
                    step = int(run.steps[i]["step"])
                    evidence = (
                        f"train.loss spiked to {losses[i]:.4f} at step {step}, "
                        f"{losses[i] / median:.1f}x the median {median:.4f} of the steps before"
                    )
                    break
        if not evidence:
            return []
        patch: dict[str, Any] = {"trainer.lr": float(f"{lr / factor:.3g}")}
        reasons = {"trainer.lr": f"a {factor:g}x lower learning rate keeps the updates stable"}
        if _trainer(run, "max_grad_norm", 1.0) is None:
            patch["trainer.max_grad_norm"] = 1.0
            reasons["trainer.max_grad_norm"] = "clip gradients so that one batch cannot blow up"
        if float(_trainer(run, "warmup_ratio", 0.1)) < 0.1:
            patch["trainer.warmup_ratio"] = 0.1
            reasons["trainer.warmup_ratio"] = (
                "warm the learning rate up over the first 10% of steps"
            )
        return [Diagnosis("divergence", evidence, patch, reasons, severity="error")]


class ImbalanceHarm(Advisor):
    """Accuracy hides a weak minority class: balanced accuracy lags behind on validation."""

    class Config(StrictConfig):
        gap: float = Field(0.08, gt=0, lt=1, description="accuracy - balanced accuracy that counts")
        ratio: float = Field(3.0, ge=1, description="largest/smallest class size that counts")

    def diagnose(self, run: Any) -> list[Diagnosis]:
        val = run.metrics.get("val") or {}
        acc, bacc = val.get("accuracy"), val.get("balanced_accuracy")
        counts = (run.split.get("class_counts") or {}).get("train") or {}
        sizes = [n for n in counts.values() if n > 0]
        if acc is None or bacc is None or len(sizes) < 2:
            return []
        ratio = max(sizes) / min(sizes)
        if acc - bacc < self.config.gap or ratio < self.config.ratio:
            return []
        smallest = min(counts, key=lambda c: counts[c] if counts[c] > 0 else math.inf)
        evidence = (
            f"val accuracy {acc:.4f} but balanced accuracy {bacc:.4f}: the minority classes are "
            f"recalled worse; the training split is {ratio:.1f}x imbalanced (smallest class "
            f"{smallest!r}: {counts[smallest]} rows)"
        )
        balancer = _section(run, "balancer").get("name", "none")
        nxt = {"none": "class-weights", "class-weights": "weighted-sampler"}.get(balancer)
        if nxt is None:
            return [Diagnosis("imbalance", evidence, severity="warning")]
        patch = {"balancer": nxt}
        reasons = {"balancer": f"{nxt}: minority-class errors cost as much as majority ones"}
        return [Diagnosis("imbalance", evidence, patch, reasons)]


class SmallData(Advisor):
    """Classes with few training examples: fine-tuning a whole encoder on them is the weak
    choice. Proposes the setfit model (contrastive fine-tuning, then a head), the embedding
    model (setfit with a frozen encoder: frozen embeddings + a trained head) when the run's
    embedding baseline matched or beat the fine-tuned model on validation, or LoRA (few
    trainable parameters) for a non-text pretrained model; the evidence names the class counts
    and the validation scores. Judges on the training split's counts and validation scores.
    For text it needs the run's embedding baseline (a model that starts from a sentence
    encoder): without one it stays quiet."""

    class Config(StrictConfig):
        min_class: int = Field(
            50, ge=1, description="fires when the smallest training class has fewer examples"
        )
        median_class: int = Field(
            100, ge=1, description="or when the median training class has fewer examples"
        )

    @staticmethod
    def _embedding_val(run: Any) -> tuple[str, float, float] | None:
        """``(metric, embedding baseline val, model val)`` on the headline metric, if known."""
        record = ((run.metrics.get("test_details") or {}).get("embedding_baseline")) or {}
        base, model = record.get("val") or {}, run.metrics.get("val") or {}
        shared = [m for m in base if isinstance(model.get(m), int | float)]
        if not shared:
            return None
        wanted = run.monitor.removeprefix("val.")
        metric = wanted if wanted in shared else shared[0]
        return metric, float(base[metric]), float(model[metric])

    def diagnose(self, run: Any) -> list[Diagnosis]:
        counts = (run.split.get("class_counts") or {}).get("train") or {}
        sizes = {str(c): int(n) for c, n in counts.items() if int(n) > 0}
        if len(sizes) < 2:
            return []
        smallest = min(sizes, key=lambda c: sizes[c])
        median = statistics.median(sizes.values())
        cfg = self.config
        if sizes[smallest] >= cfg.min_class and median >= cfg.median_class:
            return []
        evidence = (
            f"few training examples per class: the smallest, {smallest!r}, has {sizes[smallest]}"
            f" (threshold {cfg.min_class}), the median {median:g} (threshold "
            f"{cfg.median_class}) over {len(sizes)} classes"
        )
        model = _section(run, "model")
        name = model.get("name") or "hf-sequence-classification"
        compared = self._embedding_val(run)
        if "text" in run.modalities and compared is None:
            return []  # no measured sentence encoder: nothing says a frozen one would do
        if "text" not in run.modalities and not _pretrained(run):
            return []  # a model trained from scratch: LoRA has nothing to adapt
        beat = False
        if compared is not None:
            metric, base, own = compared
            greater = not metric.endswith("loss") and metric != "hamming_loss"
            beat = base >= own if greater else base <= own
            evidence += (
                f"; the embedding baseline (frozen embeddings + logistic regression) scored val "
                f"{metric} {base:.4f} against the fine-tuned model's {own:.4f}"
            )
        lora = {"method": "lora", "r": 8}
        patch: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        if "text" in run.modalities and name != "setfit":
            proposal: dict[str, Any] = {"name": "setfit"}
            if compared is not None and model.get("checkpoint"):
                proposal["checkpoint"] = model["checkpoint"]  # the baseline's sentence encoder
            if beat:
                proposal["freeze_body"] = True
                why = (
                    "the embedding model (setfit with a frozen encoder): frozen embeddings + a "
                    "trained head already did as well as fine-tuning here, at a fraction of "
                    "the cost; or model: {name: setfit} to fine-tune contrastively"
                )
            else:
                why = (
                    "setfit: contrastive fine-tuning on pairs of examples needs few per class "
                    "(SetFit, 8 per class competitive with full fine-tuning on thousands); or "
                    "model.peft: {method: lora, r: 8}, or model: {name: setfit, "
                    "freeze_body: true} for frozen embeddings + a head"
                )
            patch["model"], reasons["model"] = proposal, why
        elif name == "setfit" and beat and not model.get("freeze_body"):
            patch["model.freeze_body"] = True
            reasons["model.freeze_body"] = (
                "the frozen encoder's embeddings did as well as fine-tuning it: keep it frozen"
            )
        elif (
            name != "setfit" and "peft" in run.fields.get("model", set()) and not model.get("peft")
        ):
            patch["model.peft"] = lora
            reasons["model.peft"] = (
                "LoRA: a few low-rank adapter weights train instead of the whole network, which "
                "a small training split cannot pin down"
            )
        if not patch:
            return [Diagnosis("small-data", evidence, severity="info")]
        return [Diagnosis("small-data", evidence, patch, reasons)]


class DataProblems(Advisor):
    """Label noise that was only reported, and examples leaking between the splits."""

    def diagnose(self, run: Any) -> list[Diagnosis]:
        out: list[Diagnosis] = []
        validators = list(run.config.get("validators") or [])
        for f in run.findings:
            if (
                f.get("kind") == FindingKind.LABEL_ISSUE
                and f.get("count")
                and f.get("action") == "reported"
            ):
                names = [v if isinstance(v, str) else v.get("name") for v in validators]
                if f.get("validator") in names:
                    i = names.index(f["validator"])
                    ref = validators[i]
                    ref = {"name": ref} if isinstance(ref, str) else dict(ref)
                    ref["policy"] = "down-weight"
                    key = f"validators[{i}]"
                    out.append(
                        Diagnosis(
                            "label-noise",
                            f"{f['count']} rows look mislabelled ({f.get('message', '')})",
                            {key: ref},
                            {key: "down-weight the doubtful rows instead of trusting their labels"},
                        )
                    )
            if f.get("kind") == FindingKind.LEAKAGE and f.get("severity") == "error":
                out.append(
                    Diagnosis(
                        "leakage",
                        f"{f.get('message', 'examples shared between splits')}",
                        {"split.group_duplicates": True},
                        {"split.group_duplicates": "keep duplicates inside one split"},
                        severity="error",
                    )
                )
        return out


# -- the command ----------------------------------------------------------------------------


class RefineCommand(Command):
    """``tuneforge refine RUN [--apply] [--rounds N]``."""

    help: ClassVar[str] = (
        "Diagnose a finished run (overfitting, divergence...) and patch its config"
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_dir", metavar="RUN", help="a finished run folder")
        parser.add_argument(
            "--apply", action="store_true", help="run the patched config as the next round"
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=1,
            metavar="N",
            help="with --apply: at most N new rounds, while an advisor fires and each round "
            "is measurably better than the last (95%% interval of the difference)",
        )
        parser.add_argument("-q", "--quiet", action="store_true", help="print only the results")

    def run(self, args: Any) -> int:
        from pathlib import Path

        from tuneforge.advice import refine
        from tuneforge.console import Console
        from tuneforge.errors import UserError

        if args.rounds < 1:
            raise UserError(f"--rounds must be at least 1, got {args.rounds}")
        console = Console(mode="quiet" if args.quiet else "normal", stream=sys.stdout)
        refine(
            Path(args.run_dir),
            apply=args.apply,
            rounds=args.rounds,
            log=console,
            disable=args.disable_plugin,
            local=args.plugin,
        )
        return 0


@hookimpl
def register_advisors(register: Register) -> None:
    register("divergence", Divergence, "NaN, failed or spiking loss -> lower lr, clip, warm up")
    register("data-problems", DataProblems, "label noise reported, leakage -> policies")
    register("overfitting", Overfitting, "val loss rises while train loss falls -> regularise")
    register("imbalance", ImbalanceHarm, "minority classes recalled worse -> balance")
    register("underfitting", Underfitting, "little learning or still improving -> lr, epochs")
    register("small-data", SmallData, "few examples per class -> setfit, LoRA, embedding model")


@hookimpl
def register_commands(register: Register) -> None:
    register("refine", RefineCommand, "Diagnose a finished run and patch its config")
