"""The plugin contracts (tuneforge.components): plugins written to the declared base classes
work through the CLI, components that break them are refused in one line, and core never
probes a component for an attribute."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from tuneforge.components import Metric, ModelBuilder, Task, Validator

from conftest import ok, one_line_error, run_cli

CORE = Path(__file__).resolve().parents[1] / "core"

VALIDATOR = """
from tuneforge import hookimpl
from tuneforge.components import Finding, Validator, ValidatorConfig


class ShortText(Validator):
    '''Rows whose text is shorter than min_chars characters (by the task's content key).'''

    class Config(ValidatorConfig):
        min_chars: int = 12

    def check(self, data, task):
        keys = task.content_keys(data)  # the declared signature: the run's task is passed
        rows = [int(r) for r in keys.index[keys.str.len() < self.config.min_chars]]
        return [Finding("short-text", "warning", f"{len(rows)} short texts", rows)]


@hookimpl
def register_validators(register):
    register("short-text", ShortText)
"""


def test_a_validator_written_to_the_declared_signature_works(project) -> None:
    (project.root / "short.py").write_text(VALIDATOR)
    cfg = project.config(
        plugins={"local": ["short.py"]},
        validators=[{"name": "short-text", "policy": "drop", "min_chars": 25}],
        trainer={"epochs": 1},
    )
    report = json.loads(ok(run_cli("validate", str(cfg), "--json")))
    [finding] = [f for f in report["findings"] if f["kind"] == "short-text"]
    assert finding["validator"] == "short-text" and finding["count"] > 0
    assert finding["action"] == f"dropped {finding['count']} rows"
    ok(run_cli("run", str(cfg)))
    findings = json.loads((project.root / "runs" / "run" / "findings.json").read_text())
    assert findings["rows_kept"] == findings["rows_loaded"] - finding["count"]


BOW_MODEL = """
import json
from pathlib import Path

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import ModelBuilder, StrictConfig


def _module(vocab, num_labels):
    import torch

    class BagOfWords(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(vocab, 16, mode="sum")
            self.head = torch.nn.Linear(16, num_labels)

        def forward(self, input_ids, attention_mask, **_):
            mask = attention_mask.float()  # the mean embedding of the real tokens
            weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
            return self.head(self.embed(input_ids, per_sample_weights=weights))

    return BagOfWords()


class BagOfWordsBuilder(ModelBuilder):
    '''A bag of word embeddings: my own torch model, the tokenizer of a checkpoint.'''

    class Config(StrictConfig):
        checkpoint: str = Field(description="checkpoint folder whose tokenizer is used")
        epochs_log: str = ""

    def checkpoint_path(self):
        return self.config.checkpoint

    def build(self, spec):
        return _module(spec.inputs["vocab_size"], spec.n_outputs)

    def save(self, model, folder):
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(Path(folder) / "bow.safetensors"))
        vocab, num_labels = model.embed.num_embeddings, model.head.out_features
        (Path(folder) / "bow.json").write_text(json.dumps([vocab, num_labels]))

    def load(self, folder):
        from safetensors.torch import load_file

        model = _module(*json.loads((Path(folder) / "bow.json").read_text()))
        model.load_state_dict(load_file(str(Path(folder) / "bow.safetensors")))
        return model

    def on_epoch_start(self, model, epoch):
        with open(self.config.epochs_log, "a") as log:
            log.write(f"{type(model).__name__} {epoch}\\n")


@hookimpl
def register_models(register):
    register("bag-of-words", BagOfWordsBuilder)
"""


def test_bring_your_own_torch_model_through_the_declared_model_builder(project) -> None:
    """A ModelBuilder written from its base class alone trains, tests and predicts."""
    (project.root / "my_bow.py").write_text(BOW_MODEL)
    log = project.root / "epochs.log"
    cfg = project.config(
        plugins={"local": ["my_bow.py"]},
        model={"name": "bag-of-words", "epochs_log": str(log)},
        trainer={"epochs": 3},
    )
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    assert log.read_text().splitlines() == ["BagOfWords 1", "BagOfWords 2", "BagOfWords 3"]
    assert (run / "checkpoint" / "bow.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert 0 <= metrics["accuracy"] <= 1
    out = project.root / "pred.csv"
    ok(run_cli("predict", str(run), "--input", str(project.data), "--output", str(out)))
    header, *rows = out.read_text().splitlines()
    assert "prediction" in header.split(",") and len(rows) == 240


NOT_A_METRIC = """
from tuneforge import hookimpl


class Loose:
    '''Looks like a metric, but is not one.'''

    def __init__(self, config):
        self.config = config

    def __call__(self, y_true, y_pred, y_score):
        return 1.0


@hookimpl
def register_metrics(register):
    register("loose", Loose)
"""

INCOMPLETE_TASK = """
from tuneforge import hookimpl
from tuneforge.components import Task


class HalfTask(Task):
    '''Loads data, and nothing else.'''

    def load(self, data_config, base_dir):
        raise AssertionError("never called")


@hookimpl
def register_tasks(register):
    register("half-task", HalfTask)
"""


def test_a_component_that_does_not_subclass_its_base_is_refused(project) -> None:
    (project.root / "loose.py").write_text(NOT_A_METRIC)
    cfg = project.config(plugins={"local": ["loose.py"]}, metrics=["accuracy", "loose"])
    err = one_line_error(run_cli("run", str(cfg)))
    assert "metrics[1].name: 'loose'" in err
    assert "not a tuneforge.components.Metric" in err
    assert not (project.root / "runs").exists()


def test_a_task_missing_required_methods_is_refused(project) -> None:
    (project.root / "half.py").write_text(INCOMPLETE_TASK)
    cfg = project.config(plugins={"local": ["half.py"]}, task="half-task")
    err = one_line_error(run_cli("validate", str(cfg)))
    assert err.startswith(
        "tuneforge: error: task.name: 'half-task' from plugin 'half' does not implement "
    )
    assert "make_dataset" in err and "required by its base class" in err


def test_the_task_contract_declares_its_optional_capabilities() -> None:
    class Minimal(Task):
        def load(self, data_config, base_dir): ...
        def load_inputs(self, path, data_config): ...
        def make_dataset(self, data, rows, augmenters, seed): ...
        def predict_dataset(self, frame, data_config): ...
        def collate_fn(self, on_cuda): ...
        def build_model(self, data): ...
        def loss_fn(self, class_weights, focal_gamma=None): ...
        def predictions(self, logits): ...
        def prediction_frame(self, data, rows, logits, labels): ...
        def prediction_columns(self, logits, labels_record, source): ...
        def save_artifacts(self, model, folder): ...
        def load_artifacts(self, folder): ...

    class Builder(ModelBuilder):
        def build(self, spec): ...
        def save(self, model, folder): ...
        def load(self, folder): ...

    task = Minimal()
    task.bind(None, Builder(), [])
    assert task.defaults() == {} and task.content_keys(None) is None
    assert task.stratify_labels(None) is None and task.baselines(None, None, {}) == {}
    assert task.fit(None, None) is None and task.prepare() is None
    assert task.label_counts(None, None) == {} and task.labels_record(None) == {}
    assert task.after_validation("data", None) == "data"
    assert task.after_training(lambda: pytest.fail("predict_val called"), Path(".")) == {}
    assert Builder().checkpoint_path() is None
    with pytest.raises(TypeError, match="abstract"):
        type("NoSave", (ModelBuilder,), {"build": lambda self, spec: None})()
    assert Metric().check_data(None) is None
    assert Validator().policy == "warn"
    assert list(inspect.signature(Validator.check).parameters) == ["self", "data", "task"]
    with pytest.raises(TypeError, match="abstract"):
        type("Empty", (Task,), {})()


#: Names of components (or their classes) as core's code calls them.
_COMPONENT = {
    "task",
    "model",
    "model_builder",
    "builder",
    "comp",
    "metric",
    "validator",
    "augmenter",
    "balancer",
    "tuner",
    "advisor",
    "cmd",
    "target",
    "config",  # a component's class Config
    "entry",  # a registry entry's loaded target
    "regs",
}


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _last_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def test_core_never_probes_components_with_hasattr_or_getattr() -> None:
    probes = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("hasattr", "getattr") or not node.args:
                continue
            obj = node.args[0]
            names = {_last_name(obj), _root_name(obj)}
            if isinstance(obj, ast.Call):  # getattr(acc.unwrap_model(model), ...)
                names |= {_last_name(a) for a in obj.args}
            if names & _COMPONENT:
                probes.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []


def test_the_task_takes_the_long_form_and_checks_its_parameters(project) -> None:
    long_form = project.config(task={"name": "text-classification"})
    report = json.loads(ok(run_cli("validate", str(long_form), "--json")))
    assert report["findings"]
    bogus = project.config(task={"name": "text-classification", "max_rows": 5})
    err = one_line_error(run_cli("validate", str(bogus)))
    assert err.startswith("tuneforge: error: task.max_rows: unknown key; valid keys: calibration")
    short = project.config(task="no-such-task")
    assert "task.name: " in one_line_error(run_cli("validate", str(short)))


WRONG_FORWARD = """
from pathlib import Path

from tuneforge import hookimpl
from tuneforge.components import ModelBuilder, StrictConfig


class WrongKeys(ModelBuilder):
    '''A model whose forward takes keys no text task's batch has.'''

    class Config(StrictConfig):
        checkpoint: str = ""  # the project's config names one; unused here

    def checkpoint_path(self):
        return None

    def build(self, spec):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.head = torch.nn.Linear(4, spec.n_outputs)

            def forward(self, tokens):
                return self.head(tokens.float())

        return Net()

    def save(self, model, folder):
        Path(folder, "w.txt").write_text("-")

    def load(self, folder):
        raise AssertionError("never called")


@hookimpl
def register_models(register):
    register("wrong-keys", WrongKeys)
"""


def test_a_forward_that_does_not_take_the_tasks_batch_is_a_one_line_plugin_error(
    project, tiny_models
) -> None:
    (project.root / "wrong_keys.py").write_text(WRONG_FORWARD)
    cfg = project.config(
        plugins={"local": ["wrong_keys.py"]},
        model={"name": "wrong-keys"},
        tokenizer={"name": "hf-tokenizer", "checkpoint": str(tiny_models["bert"])},
    )
    err = one_line_error(run_cli("run", str(cfg)))
    assert "the model's forward(tokens) does not take the task's batch" in err, err
    assert "'attention_mask', 'input_ids'" in err and "Writing a model" in err
    assert "internal error" not in err


def test_a_label_outside_the_declared_classes_is_named_by_the_problem_base() -> None:
    import pandas as pd

    from tuneforge.config import DataConfig
    from tuneforge.data import TaskData
    from tuneforge.errors import DataError
    from tuneforge.plugins.problems import SingleLabelClassification

    class Bare(SingleLabelClassification):  # the problem base alone: after_validation is concrete
        load = load_inputs = make_dataset = predict_dataset = collate_fn = None
        build_model = save_artifacts = load_artifacts = None

    frame = pd.DataFrame({"y": ["a", "b", "c", "a"]})
    data = TaskData(frame, {}, "y", ["a", "b"], source="data.csv")
    with pytest.raises(DataError, match=r"data.csv: row 2: label 'c' is not one of the classes"):
        Bare().after_validation(data, DataConfig(path="data.csv", classes=["a", "b"]))


def test_debug_is_taken_after_the_command_too(project) -> None:
    proc = run_cli("validate", str(project.config()), "--debug")
    assert "unrecognized arguments" not in proc.stderr and proc.returncode == 0, proc.stderr


def test_a_run_refused_after_loading_leaves_no_folder_behind(project) -> None:
    # Ten copies of two texts: duplicates stay together, so val and test would be empty. The
    # error comes after the run's folder was made: it and the folders above it are removed.
    rows = ["text,label"] + ["refund my card,billing"] * 10 + ["parcel is late,shipping"] * 10
    (project.root / "few.csv").write_text("\n".join(rows) + "\n")
    out = project.root / "deep" / "runs" / "run"
    cfg = project.config(
        data={"path": "few.csv"}, split={"group_duplicates": True}, output={"dir": str(out)}
    )
    err = one_line_error(run_cli("run", str(cfg)))
    assert "split" in err and "empty" in err, err
    assert not (project.root / "deep").exists()


def test_the_duplicates_validator_works_for_a_task_without_content_keys() -> None:
    import pandas as pd

    from tuneforge.data import TaskData
    from tuneforge.plugins.problems import SingleLabelClassification
    from tuneforge.plugins.validators import ConflictingLabels, Duplicates

    class Bare(SingleLabelClassification):  # Task.content_keys' default: None
        load = load_inputs = make_dataset = predict_dataset = collate_fn = None
        build_model = save_artifacts = load_artifacts = None

    frame = pd.DataFrame({"k": ["x", "x", "y", "y"], "y": ["a", "a", "b", "a"]})
    data = TaskData(frame, {"kw": "k"}, "y", ["a", "b"])
    (dup,) = Duplicates().check(data, Bare())
    assert dup.rows == [0, 1]  # the raw input columns are the key
    (conflict,) = ConflictingLabels().check(data, Bare())
    assert conflict.rows == [2, 3]
