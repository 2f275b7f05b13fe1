"""Built-in tabular plugin: ``tabular-regression`` and ``tabular-classification`` tasks, the
``mlp`` model, ``gaussian-noise`` and ``mixup`` augmenters, the ``missing-features``
validator and the ``smote`` / ``adasyn`` / ``borderline-smote`` balancers (imbalanced-learn).

Registered lazily: listing this plugin imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from tuneforge import hookimpl
from tuneforge.hookspecs import Register

_PKG = "tuneforge.plugins.tabular"


@hookimpl
def register_tasks(register: Register) -> None:
    register(
        "tabular-regression",
        f"{_PKG}.task:TabularRegressionTask",
        "Predict numeric target(s) from numeric and categorical columns",
    )
    register(
        "tabular-classification",
        f"{_PKG}.task:TabularClassificationTask",
        "Classify rows of numeric and categorical columns",
    )
    register(
        "tabular-multilabel",
        f"{_PKG}.multilabel:TabularMultiLabelTask",
        "Tag rows of numeric and categorical columns with any number of labels",
    )


@hookimpl
def register_models(register: Register) -> None:
    register("mlp", f"{_PKG}.model:MLP", "MLP with categorical embeddings (tabular tasks)")


@hookimpl
def register_augmenters(register: Register) -> None:
    register(
        "gaussian-noise", f"{_PKG}.augment:GaussianNoise", "Gaussian noise on numeric features"
    )
    register("tabular-mixup", f"{_PKG}.augment:Mixup", "Mixup of tabular rows and their targets")


@hookimpl
def register_validators(register: Register) -> None:
    register(
        "missing-features",
        f"{_PKG}.checks:MissingFeatures",
        "Missing feature values (imputed on train statistics by default)",
    )


@hookimpl
def register_balancers(register: Register) -> None:
    register("smote", f"{_PKG}.balance:Smote", "SMOTE / SMOTE-NC synthetic minority rows")
    register("adasyn", f"{_PKG}.balance:Adasyn", "ADASYN synthetic minority rows (numeric)")
    register(
        "borderline-smote",
        f"{_PKG}.balance:BorderlineSmote",
        "Borderline-SMOTE synthetic minority rows (numeric)",
    )
