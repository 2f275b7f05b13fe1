"""Classification losses shared by the task plugins (torch imported on use)."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_loss(
    class_weights: np.ndarray | None = None, focal_gamma: float | None = None
) -> Any:
    """Cross-entropy, or the focal loss (Lin et al., 2017) when ``focal_gamma`` is set.

    Both take logits and integer class ids (or class probabilities, as mixup produces), and
    optional per-class weights.
    """
    import torch
    import torch.nn.functional as F

    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if focal_gamma is None:
        return torch.nn.CrossEntropyLoss(weight=weight)

    class FocalLoss(torch.nn.Module):
        """``-(1 - p_t)^gamma * log p_t``, averaged like weighted cross-entropy."""

        def __init__(self) -> None:
            super().__init__()
            self.gamma = float(focal_gamma)
            self.reduction = "mean"  # "none" gives per-row losses (used for row weights)
            self.register_buffer("weight", weight if weight is not None else torch.ones(0))

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(logits.float(), dim=-1)
            log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
            loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
            if self.weight.numel():
                w = self.weight[target.long()]
                if self.reduction == "none":
                    return loss * w
                return (loss * w).sum() / w.sum()
            return loss if self.reduction == "none" else loss.mean()

    return FocalLoss()
