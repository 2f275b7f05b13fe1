"""The image-regression task: numeric target(s) per image, from a CSV/Parquet of (path, targets).

Reuses the image pipeline (decoding, timm transforms, augmenters, timm models) and the
regression plugin's public helpers: targets parsed by ``parse_targets``, standardised with a
train-split ``TargetScaler`` (saved with the checkpoint), regression losses and metrics, and
quantile-binned strata for the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data import TaskData
from tuneforge.errors import ConfigError
from tuneforge.plugins.image.task import ImageTask
from tuneforge.plugins.regression import RegressionTaskMixin, parse_targets


class ImageRegressionTask(RegressionTaskMixin, ImageTask):
    """Predict one or more numbers per image (``data.target``: a column or a list)."""

    name = "image-regression"

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        self.base_dir = base_dir
        self.check_target_config(data_config)
        path = Path(data_config.path)
        path = path if path.is_absolute() else base_dir / path
        if path.is_dir():
            raise ConfigError(
                "data.path", f"{self.name} needs a table of image paths and target column(s)"
            )
        frame, col = self._read(path, data_config, True)
        frame = parse_targets(frame, data_config.target, str(path))
        return self.task_data(frame, col, data_config.target, None, path)

    def defaults(self) -> dict[str, Any]:
        return {
            "validators": ["image-files", "missing", "duplicates", "target-values"],
            "tokenizer": {"name": "timm-transforms"},
            "model": {"name": "timm"},
            "metrics": ["rmse", "mae", "r2"],
        }

    def build_model(self, data: TaskData) -> Any:
        import torch

        from tuneforge.plugins.image.timm_model import TimmModel

        model = super().build_model(data)
        if not isinstance(self.model_builder, TimmModel):
            return model
        # A small head: predictions start near the (standardised) mean. timm's default head
        # init is scaled for class logits (efficientnet's is U(-1, 1) for one output), which
        # makes early regression losses explode.
        head = model.model.get_classifier()
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.trunc_normal_(head.weight, std=0.01)
            torch.nn.init.zeros_(head.bias)
        return model
