"""A reference model that beats the trained model is named (metrics.json ``recommendations``)."""

from __future__ import annotations

from tuneforge.plugins.metrics import METRICS
from tuneforge.plugins.regression import MAE, MSE, RMSE
from tuneforge.training import baseline_advice


def test_a_better_regression_baseline_is_recommended_on_the_headline_metric() -> None:
    metrics = {"mse": MSE(), "rmse": RMSE(), "mae": MAE()}
    test = {
        "mse": 4.0,
        "rmse": 2.0,
        "mae": 1.5,
        "baseline_ridge_mse": 5.0,  # worse: lower is better
        "baseline_gradient_boosting_mse": 3.0,  # better
        "baseline_gradient_boosting_rmse": 1.7,
    }
    advice = baseline_advice(test, metrics, "loss")  # loss is no metric: the first, mse
    assert len(advice) == 1
    assert "gradient boosting baseline" in advice[0] and "mse" in advice[0]
    assert "3 vs 4" in advice[0]
    # monitored rmse is the headline; the mse keys are not read as rmse and vice versa
    advice = baseline_advice(test, metrics, "rmse")
    assert len(advice) == 1 and "test rmse (1.7 vs 2)" in advice[0]


def test_no_recommendation_when_the_model_wins_or_a_value_is_missing() -> None:
    metrics = {"accuracy": METRICS["accuracy"](), "f1_macro": METRICS["f1_macro"]()}
    test = {"accuracy": 0.9, "f1_macro": 0.8, "majority_baseline_accuracy": 0.6}
    assert baseline_advice(test, metrics, "loss") == []
    test["majority_baseline_accuracy"] = 0.95  # higher is better: the baseline wins
    assert "majority baseline" in baseline_advice(test, metrics, "accuracy")[0]
    assert baseline_advice({"f1_macro": 0.8}, metrics, "accuracy") == []
    assert baseline_advice({"accuracy": float("nan"), **test}, {}, "loss") == []
