"""Frozen backbone features for image tasks (:meth:`Task.frozen_features`).

The run's timm architecture with its pretrained weights (``model.weights``: a file or a weights
package, loaded the way :class:`~tuneforge.plugins.image.timm_model.TimmModel` loads them) and
no classifier (``reset_classifier(0)``: the pooled features), applied to each image under the
run's evaluation transform, batched under ``torch.inference_mode``; cached per task instance
by row and file. torch and timm are imported inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.plugins.vector_cache import VectorCache

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Images per forward pass.
BATCH_SIZE = 32


class FeatureCache(VectorCache):
    """A task instance's image features, keyed by (row, path): computed once per image."""

    def __init__(self) -> None:
        super().__init__()
        self.source: str | None = None

    def features(self, task: Any, rows: Any, paths: list[str]) -> np.ndarray | None:
        """Pooled features of ``paths`` (one per row), or None when the run's model is no
        timm model with pretrained weights."""

        from tuneforge.plugins.image.timm_model import TimmModel

        builder = task.model_builder
        if not isinstance(builder, TimmModel) or builder.config.weights is None:
            return None
        if task.base_dir is not None and builder.base_dir is None:
            builder.base_dir = task.base_dir  # a relative weights path is against the config
        source = builder.weights_source()
        assert source is not None
        name = f"{builder.config.architecture}:{source[0]}"
        if name != self.source:
            self.vectors, self.source = {}, name
        keys = [(int(r), p) for r, p in zip(rows, paths, strict=True)]
        return self.lookup(
            keys, lambda todo: backbone_features(task, builder, [paths[i] for i in todo])
        )


def backbone_features(task: Any, builder: Any, paths: list[str]) -> np.ndarray:
    """The pooled features of the builder's pretrained backbone for ``paths``."""
    import numpy as np
    import torch

    from tuneforge.plugins.image.task import open_image
    from tuneforge.plugins.image.transforms import TimmTransforms

    model = builder.create(1)
    builder.load_pretrained(model, *builder.weights_source())
    model.reset_classifier(0)  # forward now returns the pooled features
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    own = task.tokenizer.config if isinstance(task.tokenizer, TimmTransforms) else None
    transforms = TimmTransforms(own)
    transforms.setup(builder.data_config())
    transform, channels = transforms.eval_transform(), transforms.channels
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), BATCH_SIZE):
            batch = [transform(open_image(p, channels)) for p in paths[start : start + BATCH_SIZE]]
            out.append(model(torch.stack(batch).to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
