"""The ``mlp`` model for tabular data: categorical embeddings + numeric inputs -> MLP.

Numeric inputs arrive imputed and standardised with train-split statistics (the task's
preprocessing); each categorical column gets an embedding (fastai's size rule, capped).
Weights are saved with safetensors, the architecture as ``mlp.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tuneforge.components import ModelBuilder, ModelSpec, StrictConfig
from tuneforge.errors import ConfigError, UserError

ARCH_FILE = "mlp.json"
WEIGHTS_FILE = "model.safetensors"


def embedding_size(cardinality: int, cap: int) -> int:
    """fastai's rule of thumb ``round(1.6 * n ** 0.56)``, at most ``cap``."""
    return max(1, min(cap, round(1.6 * cardinality**0.56)))


def make_mlp(arch: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.arch = arch
            self.embeddings = nn.ModuleList(
                nn.Embedding(n, embedding_size(n, arch["embedding_dim"]))
                for n in arch["cardinalities"]
            )
            width = arch["n_numeric"] + sum(e.embedding_dim for e in self.embeddings)
            layers: list[nn.Module] = []
            for _ in range(arch["layers"]):
                layers.append(nn.Linear(width, arch["hidden"]))
                if arch["norm"] == "batch":
                    layers.append(nn.BatchNorm1d(arch["hidden"]))
                elif arch["norm"] == "layer":
                    layers.append(nn.LayerNorm(arch["hidden"]))
                layers += [nn.ReLU(), nn.Dropout(arch["dropout"])]
                width = arch["hidden"]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(width, arch["n_outputs"])

        def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
            parts = [x_num.float()]
            parts += [emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings)]
            return self.head(self.body(torch.cat(parts, dim=1)))

    return TabularMLP()


class MLP(ModelBuilder):
    """A multilayer perceptron over standardised numeric and embedded categorical columns."""

    class Config(StrictConfig):
        hidden: int = Field(128, ge=1, le=65536, description="units per hidden layer")
        layers: int = Field(2, ge=0, le=32, description="hidden layers")
        dropout: float = Field(0.1, ge=0, lt=1)
        norm: Literal["layer", "batch", "none"] = Field(
            "layer", description="normalisation after each hidden layer (batch needs batches > 1)"
        )
        embedding_dim: int = Field(16, ge=1, le=1024, description="largest categorical embedding")
        impute: Literal["median", "mean", "zero"] = Field(
            "median", description="missing numeric values: fill fitted on the train split"
        )
        loss: Literal["mse", "l1", "huber"] | None = Field(
            None, description="regression loss on standardised targets (default mse)"
        )

    def build(self, spec: ModelSpec) -> Any:
        """An MLP over ``spec.inputs["n_numeric"]`` standardised numeric columns and one
        embedding per categorical column (``spec.inputs["cardinalities"]``), with
        ``spec.n_outputs`` outputs."""
        try:
            n_numeric, cardinalities = spec.inputs["n_numeric"], spec.inputs["cardinalities"]
        except KeyError:
            raise ConfigError(
                "model.name", "mlp is a tabular model: use it with a tabular task"
            ) from None
        n_outputs = spec.n_outputs
        cfg = self.config
        arch = {
            "n_numeric": n_numeric,
            "cardinalities": list(cardinalities),
            "n_outputs": n_outputs,
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "dropout": cfg.dropout,
            "norm": cfg.norm,
            "embedding_dim": cfg.embedding_dim,
        }
        return make_mlp(arch)

    @staticmethod
    def save(model: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        (Path(folder) / ARCH_FILE).write_text(json.dumps(model.arch, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(folder) / WEIGHTS_FILE))

    @staticmethod
    def load(folder: Path) -> Any:
        from safetensors.torch import load_file

        try:
            arch = json.loads((Path(folder) / ARCH_FILE).read_text())
            model = make_mlp(arch)
            model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        except Exception as exc:  # missing, truncated or mismatched files
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"checkpoint {folder}: cannot load the mlp: {type(exc).__name__}: {first}"
            ) from None
        return model
