"""The trainer's fault tolerance: non-finite steps, out-of-memory retry, deterministic mode,
atomic training-state checkpoints and safe loading.

The in-process tests train a small torch model on generated tensors with the real
:class:`tuneforge.trainer.Trainer` (seconds each).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from tuneforge.config import TrainerConfig
from tuneforge.console import Console
from tuneforge.errors import UserError
from tuneforge.trainer import FitHooks, Trainer

from conftest import run_cli


class Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


def collate(rows: list[dict]) -> dict:
    return {
        "x": torch.stack([r["x"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
    }


class Net(torch.nn.Module):
    """A small classifier. ``oom_above``: like a GPU without room for larger batches, its
    forward raises the real ``torch.cuda.OutOfMemoryError`` for a batch above that size."""

    def __init__(self, oom_above: int | None = None, oom_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        self.oom_above = oom_above
        self.oom_calls, self.calls = oom_calls, 0  # also out of memory at these forward calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        too_big = self.oom_above is not None and x.shape[0] > self.oom_above
        if too_big or self.calls in self.oom_calls:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
            )
        return self.body(x)


class NormNet(Net):
    """:class:`Net` with a BatchNorm1d layer, which cannot train on a batch of one example."""

    def __init__(self, oom_above: int | None = None, oom_calls: tuple[int, ...] = ()) -> None:
        super().__init__(oom_above, oom_calls)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 3),
        )


def data(n: int, seed: int, bad_rows: tuple[int, ...] = ()) -> Rows:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    for r in bad_rows:
        x[r, 2] = float("inf")  # a corrupt feature value: the loss of its batch is NaN
    return Rows(x, y)


def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
    }


def fit(
    train: Rows, model_args: dict | None = None, net: type = Net, **trainer: object
) -> tuple[Trainer, torch.nn.Module, object, str]:
    cfg = TrainerConfig(
        **{
            "epochs": 2,
            "batch_size": 16,
            "lr": 1e-2,
            "device": "cpu",
            "precision": "fp32",
            "num_workers": 0,
            "early_stopping_patience": None,
            "log_every_n_steps": 2,
            **trainer,
        }
    )
    out = io.StringIO()
    tr = Trainer(cfg, Console("normal", stream=out))
    model = net(**(model_args or {}))
    result = tr.fit(
        model,
        train,
        data(32, seed=99),
        collate,
        torch.nn.CrossEntropyLoss(),
        FitHooks(evaluate=evaluate, save_best=lambda m: None),
        monitor="loss",
        mode="min",
    )
    return tr, tr.accelerator.unwrap_model(model), result, out.getvalue()


# -- non-finite loss ---------------------------------------------------------------------------
def test_nonfinite_skip_skips_the_bad_step_and_reports_it() -> None:
    _, model, result, out = fit(data(64, seed=0, bad_rows=(5,)), nonfinite="skip")
    # The corrupt row is in one batch per epoch: one step skipped per epoch, the rest trained.
    assert result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(r["train.loss"])) for r in result.history)
    assert "skipped 1 optimizer step with a non-finite loss or gradients (epoch 1" in out


def test_nonfinite_stop_ends_the_run_with_a_one_line_diagnosis() -> None:
    with pytest.raises(UserError) as err:
        fit(data(64, seed=0, bad_rows=(5,)))  # the default policy is stop
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"NaN/inf loss or gradients at epoch 1, step \d+ \(lr [\d.e-]+\)", message)
    assert "trainer.lr" in message and "trainer.nonfinite: skip" in message


def test_nonfinite_skip_stops_after_too_many_in_a_row() -> None:
    every_row_bad = tuple(range(64))
    with pytest.raises(UserError, match=r"4 optimizer steps in a row had a non-finite"):
        fit(data(64, seed=0, bad_rows=every_row_bad), nonfinite="skip", nonfinite_max_consecutive=3)


def test_a_skipped_step_leaves_the_model_as_it_was() -> None:
    # All rows bad, bound high: every step is skipped, so the weights stay at their init.
    tr, model, result, _ = fit(
        data(32, seed=0, bad_rows=tuple(range(32))),
        epochs=1,
        nonfinite="skip",
        nonfinite_max_consecutive=100,
    )
    from accelerate.utils import set_seed

    set_seed(tr.config.seed)  # as the Trainer did before the model was built
    init = Net()
    assert result.skipped_steps == 2
    for a, b in zip(model.parameters(), init.parameters(), strict=True):
        assert torch.equal(a, b)


# -- out of memory -----------------------------------------------------------------------------
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch() -> None:
    train = data(64, seed=1)
    _, ref, ref_result, _ = fit(train, batch_size=32)
    _, small, result, out = fit(train, {"oom_above": 8}, batch_size=32, auto_batch_size=True)
    assert "CUDA out of memory at batch 32: retrying with 16 x 2 accumulation" in out
    assert "CUDA out of memory at batch 16: retrying with 8 x 4 accumulation" in out
    # 4 micro-batches of 8 give the gradient of the batch of 32: the same training.
    for a, b in zip(small.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [r["train.steps"] for r in result.history] == [
        r["train.steps"] for r in ref_result.history
    ]


def test_out_of_memory_late_in_an_accumulation_window_drops_that_update_only() -> None:
    # Batch 16, 2 batches per optimizer step. Call 1 (16 rows) runs out of memory: split in 2.
    # Calls 2-3 are the window's first batch, 4-5 its second: call 5 fails after call 4's
    # backward, so the window holds partial gradients. That update is dropped; it is not a
    # non-finite step, so the default nonfinite: stop does not end the run.
    _, model, result, out = fit(
        data(64, seed=1),
        {"oom_above": 8, "oom_calls": (5,)},
        batch_size=16,
        gradient_accumulation_steps=2,
        auto_batch_size=True,
    )
    assert "retrying with 4 x 8 accumulation" in out
    assert result.skipped_steps == 0
    assert [r["train.steps"] for r in result.history] == [2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_out_of_memory_without_auto_batch_size_is_a_one_line_error() -> None:
    with pytest.raises(UserError) as err:
        fit(data(64, seed=1), {"oom_above": 8}, batch_size=32, auto_batch_size=False)
    assert str(err.value).startswith("CUDA out of memory at batch 32: lower trainer.batch_size")


def test_micro_batches_are_near_equal_and_never_of_one_row() -> None:
    from tuneforge.trainer import _row_slices

    for n in range(1, 70):
        for chunks in (1, 2, 3, 4, 8, 16, 64):
            batch = {"x": torch.arange(n), "scale": torch.tensor(2.0)}
            parts = list(_row_slices(batch, n, chunks))
            sizes = [len(sub["x"]) for _, sub in parts]
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1, (n, chunks, sizes)
            assert min(sizes) >= 2 or n == 1, (n, chunks, sizes)
            assert torch.equal(torch.cat([sub["x"] for _, sub in parts]), batch["x"])
            assert all(sub["scale"] is batch["scale"] for _, sub in parts)  # not per-row


# -- the last batch ----------------------------------------------------------------------------
@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_last_batch_of_one_example_does_not_break_batchnorm(accumulation: int) -> None:
    # 33 rows in batches of 16: the third batch would hold one example.
    _, model, result, out = fit(
        data(33, seed=4), net=NormNet, gradient_accumulation_steps=accumulation
    )
    line = (
        "the last training batch of 1 example is merged into the one before (N = 33, batch size 16)"
    )
    assert out.count(line) == 1  # once, not per epoch
    assert [r["train.steps"] for r in result.history] == [2 // accumulation] * 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_out_of_memory_split_makes_no_one_row_micro_batch() -> None:
    # Batches of 13 (27 rows: the last, of one, merged: 13 and 14) and room for 4 rows: in 4
    # pieces, 13 is 4 + 3 + 3 + 3 (not 4 + 4 + 4 + 1, which BatchNorm cannot train on).
    _, model, result, out = fit(
        data(27, seed=5), {"oom_above": 4}, net=NormNet, batch_size=13, auto_batch_size=True
    )
    assert "out of memory at batch 7: retrying with 4 x 4 accumulation" in out
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(UserError, match=r"out of memory even at batch 3: the model does not fit"):
        fit(data(27, seed=5), {"oom_above": 1}, net=NormNet, batch_size=13, auto_batch_size=True)


# -- L1 penalty --------------------------------------------------------------------------------
def l1_norm(model: torch.nn.Module) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters() if p.ndim >= 2))


def test_l1_penalty_shrinks_the_weights_and_not_the_logged_loss() -> None:
    train = data(64, seed=3)
    _, plain, plain_result, _ = fit(train, epochs=4, weight_decay=0.0)
    _, sparse, result, _ = fit(train, epochs=4, weight_decay=0.0, l1=0.05)
    assert l1_norm(sparse) < 0.8 * l1_norm(plain)
    # Biases are not penalised; the logged training loss is the data loss alone (no penalty
    # term of ~0.05 * |w| ~ 1 in it).
    assert result.history[-1]["train.loss"] < plain_result.history[0]["train.loss"] + 0.2


def test_l1_penalty_is_counted_once_per_step_when_the_batch_is_split() -> None:
    train = data(64, seed=1)
    _, ref, _, _ = fit(train, batch_size=32, l1=0.01)
    _, small, _, _ = fit(train, {"oom_above": 8}, batch_size=32, auto_batch_size=True, l1=0.01)
    for a, b in zip(small.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- deterministic mode ------------------------------------------------------------------------
def test_deterministic_mode_sets_torch_flags_and_repeats_exactly(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        runs = [fit(data(64, seed=2), deterministic=True, seed=s)[2] for s in (7, 7, 8)]
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn

    def numbers(result: object) -> list:
        return [{k: v for k, v in r.items() if "per_s" not in k} for r in result.history]

    assert numbers(runs[0]) == numbers(runs[1])
    assert numbers(runs[0]) != numbers(runs[2])  # another seed: the comparison can fail


# -- atomic checkpoints ------------------------------------------------------------------------
def loop_state(epoch: int) -> dict:
    """A loop state as the trainer stores it (at an epoch's start)."""
    from tuneforge.checkpoint import LOOP_STATE

    state: dict = {k: 0 for k in LOOP_STATE}
    state.update(epoch=epoch, history=[], sums=[], counts=[], best_value=None, best_epoch=None)
    return state


def test_checkpoints_are_atomic_and_the_last_k_are_kept(tmp_path: Path) -> None:
    from tuneforge.checkpoint import capture_rngs, load_checkpoint, save_checkpoint, step_dirs

    tr = Trainer(TrainerConfig(device="cpu", precision="fp32"), Console("quiet"))
    acc = tr.accelerator
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    rngs = capture_rngs({})
    root = tmp_path / "state"
    for step in (1, 2, 3):
        save_checkpoint(acc, root, step, loop_state(step), rngs, keep=2)
    assert [s for s, _ in step_dirs(root)] == [2, 3]
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def crash(tmp: Path) -> dict:  # the process dies while the checkpoint is being written
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        save_checkpoint(acc, root, 4, loop_state(4), rngs, keep=2, extra=crash)
    assert [s for s, _ in step_dirs(root)] == [2, 3]  # no step-000004, nothing pruned

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    state, _ = load_checkpoint(acc, root / "step-000003")
    assert state["epoch"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])

    # A file cut short after the rename (a disk error) is named, not loaded.
    weights = root / "step-000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(UserError, match=re.escape(str(weights))):
        load_checkpoint(acc, root / "step-000003")


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_loads(
    tmp_path: Path,
) -> None:
    """The run's config.yaml edited between the kill and --resume: another model."""
    from tuneforge.checkpoint import capture_rngs, load_checkpoint, save_checkpoint

    def prepared(hidden: int) -> tuple:
        tr = Trainer(TrainerConfig(device="cpu", precision="fp32"), Console("quiet"))
        model = Net()
        model.body[0], model.body[2] = torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return tr.accelerator, *tr.accelerator.prepare(model, optimizer)

    acc, model, optimizer = prepared(16)
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    ckpt = save_checkpoint(acc, tmp_path / "state", 1, loop_state(1), capture_rngs({}), keep=1)
    assert ckpt is not None
    acc, wider, wider_opt = prepared(32)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_checkpoint(acc, ckpt, wider, wider_opt)
    assert str(err.value).startswith(f"{ckpt / 'model.safetensors'}: 'body.0.")
    assert "has shape [16" in str(err.value) and "this run's model [32" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())  # untouched
    acc, same, same_opt = prepared(16)
    load_checkpoint(acc, ckpt, same, same_opt)  # the model it was written for loads
    for a, b in zip(same.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


# -- safe loading ------------------------------------------------------------------------------
def test_predict_never_unpickles_a_planted_checkpoint(project, tmp_path: Path) -> None:
    cfg = project.config(trainer={"epochs": 1})
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    run = project.root / "runs" / "run"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (run / "checkpoint" / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    # Beside the safetensors weights the planted file is ignored ...
    proc = run_cli("predict", str(run), "--input", str(project.data))
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    # ... and alone it is refused (weights_only), never executed.
    (run / "checkpoint" / "model.safetensors").unlink()
    proc = run_cli("predict", str(run), "--input", str(project.data))
    assert proc.returncode != 0
    assert not marker.exists()
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
