"""``timm-transforms``: resize / centre-crop / normalise from the model's timm ``pretrained_cfg``
(``timm.data.resolve_data_config`` + ``create_transform``), with any key overridden in config.

It fills the pipeline's ``tokenizer`` slot for images: the same eval transform runs on every
split and at predict time; training-time random crops and flips are an augmenter
(``timm-augment``), so they only ever touch the training split.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tuneforge.components import Component, StrictConfig
from tuneforge.errors import ConfigError


class TimmTransforms(Component):
    """Eval-time preprocessing resolved from the timm model (overridable per key)."""

    class Config(StrictConfig):
        input_size: int | tuple[int, int] | None = Field(
            None, description="image size (square int or [height, width]); default: the model's"
        )
        interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None
        mean: tuple[float, ...] | None = None
        std: tuple[float, ...] | None = None
        crop_pct: float | None = Field(
            None, gt=0, le=1, description="resize to size/crop_pct, then centre-crop; 1 = no crop"
        )
        crop_mode: Literal["center", "squash", "border"] | None = None

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.data_config: dict[str, Any] | None = None

    def setup(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """Resolve the final data config from the model's defaults and this config's overrides."""
        from timm.data import resolve_data_config

        c = self.config
        chans = defaults["input_size"][0]
        args: dict[str, Any] = {}
        if c.input_size is not None:
            size = (c.input_size, c.input_size) if isinstance(c.input_size, int) else c.input_size
            args["input_size"] = (chans, *size)
        for key in ("interpolation", "mean", "std", "crop_pct", "crop_mode"):
            value = getattr(c, key)
            if value is not None:
                args[key] = value
        for key in ("mean", "std"):
            if key in args and len(args[key]) not in (1, chans):
                raise ConfigError(
                    f"tokenizer.{key}", f"needs 1 or {chans} values (one per input channel)"
                )
            if key in args and len(args[key]) == 1:
                args[key] = tuple(args[key]) * chans
        cfg = resolve_data_config(args, pretrained_cfg=defaults, use_test_size=True)
        self.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        return self.data_config

    @property
    def channels(self) -> int:
        assert self.data_config is not None, "setup() first"
        return int(self.data_config["input_size"][0])

    @property
    def size(self) -> tuple[int, int]:
        assert self.data_config is not None, "setup() first"
        return tuple(self.data_config["input_size"][1:])  # type: ignore[return-value]

    def eval_transform(self) -> Any:
        from timm.data import create_transform

        assert self.data_config is not None, "setup() first"
        return create_transform(**self.data_config, is_training=False)

    def train_transform(self, options: dict[str, Any]) -> Any:
        """timm's training transform (random resized crop, flips, RandAugment...) for ``options``."""
        from timm.data import create_transform

        assert self.data_config is not None, "setup() first"
        cfg = {k: v for k, v in self.data_config.items() if k not in ("crop_pct", "crop_mode")}
        return create_transform(**cfg, is_training=True, **options)
