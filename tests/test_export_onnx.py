"""``tuneforge export --format onnx`` and ``tuneforge predict --engine onnx``: parity with
PyTorch for text (tiny BERT), image (tiny timm) and tabular (mlp) runs, int8 quantization,
one-line errors with nothing left behind, and the documented onnxruntime snippet.

Tiny random-init models on generated data: seconds each (the export itself is most of it).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, ok, one_line_error, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: Until the installed metadata lists the ``export`` entry point (``pip install -e .``), the
#: plugin is loaded by module name, as a user may load any plugin.
_INSTALLED = any(e.name == "export" for e in entry_points(group="tuneforge"))
PLUGIN = [] if _INSTALLED else ["--plugin", "tuneforge.plugins.export"]


def export_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("export", *args, *PLUGIN, cwd=cwd)


def predictions(run: Path, inputs: Path, out: Path, *engine: str) -> pd.DataFrame:
    ok(run_cli("predict", str(run), "-i", str(inputs), "-o", str(out), *engine))
    return pd.read_csv(out)


def assert_same_predictions(torch_out: pd.DataFrame, onnx_out: pd.DataFrame) -> None:
    assert list(torch_out.columns) == list(onnx_out.columns)
    assert (torch_out["prediction"] == onnx_out["prediction"]).all()
    probs = [c for c in torch_out.columns if c.startswith("prob_")]
    np.testing.assert_allclose(onnx_out[probs], torch_out[probs], atol=1e-5)


def parity_lines(stdout: str) -> dict[str, tuple[float, float]]:
    found = re.findall(
        r"parity (fp32|int8) on .*?: max \|logit diff\| ([^\s,]+).*?predictions agree ([\d.]+)%",
        stdout,
    )
    return {kind: (float(diff), float(agree)) for kind, diff, agree in found}


# -- text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A tiny-BERT run on generated support tickets (trained once for this module)."""
    from tinymodels import make_texts, write_csv

    root = tmp_path_factory.mktemp("text")
    write_csv(root / "data.csv", make_texts(200, seed=1))
    write_csv(root / "new.csv", make_texts(30, seed=7))
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        "trainer": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "early_stopping_patience": None},
        "output": {"dir": str(root / "runs" / "run")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    ok(run_cli("run", str(root / "config.yaml")))
    return root / "runs" / "run"


def test_text_export_passes_parity_and_predict_engine_onnx_matches_torch(text_run: Path) -> None:
    out = ok(export_cli(str(text_run), "--format", "onnx", "--quantize", "int8"))
    figures = parity_lines(out)
    assert figures["fp32"][0] <= 1e-3 and figures["fp32"][1] == 100.0, out
    assert "int8" in figures and "reported, not checked" in out
    folder = text_run / "onnx"
    record = json.loads((folder / "export.json").read_text())
    assert record["source_run"] == str(text_run.resolve())
    assert record["opset"] == 18 and {"torch", "onnx", "onnxruntime"} <= set(record["versions"])
    assert record["parity"]["fp32"]["passed"] is True
    assert 0 <= record["parity"]["int8"]["agreement"] <= 1
    assert record["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]
    assert record["preprocessing"]["max_length"] > 0
    # The preprocessing beside the model: the tokenizer, calibration, labels; no torch weights.
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json"} <= names
    assert "calibration.json" in names  # every non-weight file of the checkpoint
    assert not [n for n in names if n.endswith((".safetensors", ".bin"))]
    assert set(record["files"]) == names
    assert not list(text_run.glob(".onnx.*"))  # no temporary folder left

    # The ONNX model's session takes a batch size and a sequence length it was not traced with.
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((3, 11), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feed)[0].shape == (3, 3)

    new = text_run.parents[1] / "new.csv"
    torch_out = predictions(text_run, new, text_run.parent / "p_torch.csv")
    onnx_out = predictions(text_run, new, text_run.parent / "p_onnx.csv", "--engine", "onnx")
    assert_same_predictions(torch_out, onnx_out)
    int8 = predictions(text_run, new, text_run.parent / "p_int8.csv", "--engine", "onnx-int8")
    assert len(int8) == len(torch_out) and list(int8.columns) == list(torch_out.columns)

    # Exporting again replaces the earlier export whole (no --quantize: no int8 model left).
    ok(export_cli(str(text_run)))
    assert not (folder / "model.int8.onnx").exists()
    err = one_line_error(
        run_cli(
            "predict",
            str(text_run),
            "-i",
            str(new),
            "-o",
            str(text_run.parent / "x.csv"),
            "--engine",
            "onnx-int8",
        )
    )
    assert "no model.int8.onnx" in err and "--quantize int8" in err


def test_export_refuses_bad_input_in_one_line_and_leaves_nothing(
    text_run: Path, tmp_path: Path
) -> None:
    # A missing run, an unfinished run, an unknown format or quantization, a bad output.
    assert "run folder not found" in one_line_error(export_cli(str(tmp_path / "nope")))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(text_run, unfinished, ignore=shutil.ignore_patterns("onnx"))
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "failed"}))
    assert "did not complete" in one_line_error(export_cli(str(unfinished)))
    assert not (unfinished / "onnx").exists()
    err = one_line_error(export_cli(str(text_run), "--format", "tflite", "-o", str(tmp_path / "o")))
    assert "--format tflite" in err and "onnx" in err
    err = one_line_error(export_cli(str(text_run), "--quantize", "int4", "-o", str(tmp_path / "o")))
    assert "--quantize int4" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(export_cli(str(text_run), "-o", str(busy)))
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    # A parity check that fails (no difference at all allowed) is an error; nothing is written,
    # not even the missing parent folders.
    target = tmp_path / "new" / "deep" / "onnx"
    proc = export_cli(str(text_run), "-o", str(target), "--tolerance", "0")
    err = one_line_error(proc)
    assert "does not match PyTorch" in err and "nothing was written" in err
    assert "parity fp32" in proc.stdout  # the figures are printed before the error
    assert not (tmp_path / "new").exists()

    # predict --engine onnx without an export, or with a stale one.
    new = text_run.parents[1] / "new.csv"
    err = one_line_error(
        run_cli(
            "predict",
            str(text_run),
            "-i",
            str(new),
            "--engine",
            "onnx",
            "--onnx-dir",
            str(tmp_path / "none"),
        )
    )
    assert "no ONNX export" in err and f"tuneforge export {text_run}" in err
    stale = tmp_path / "stale"
    ok(export_cli(str(text_run), "-o", str(stale)))
    record = json.loads((stale / "export.json").read_text())
    (stale / "export.json").write_text(json.dumps({**record, "checkpoint_sha256": "0" * 64}))
    err = one_line_error(
        run_cli(
            "predict", str(text_run), "-i", str(new), "--engine", "onnx", "--onnx-dir", str(stale)
        )
    )
    assert "not an export of" in err and "tuneforge export" in err
    assert not (text_run / "predictions" / "new.csv").exists()


# -- image and tabular --------------------------------------------------------------------------


def test_image_export_parity_and_predict_engine_onnx(tmp_path: Path) -> None:
    from test_image import make_images, write_config

    make_images(tmp_path / "images", per_class=8)
    cfg = write_config(tmp_path / "config.yaml", trainer={"epochs": 1})
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    out = ok(export_cli(str(run), "--quantize", "int8"))
    figures = parity_lines(out)
    assert figures["fp32"][0] <= 1e-3 and figures["fp32"][1] == 100.0, out
    record = json.loads((run / "onnx" / "export.json").read_text())
    assert record["inputs"]["pixel_values"]["shape"][0] == "batch"
    assert (run / "onnx" / "image_transform.json").is_file()  # the transform's parameters
    inputs = tmp_path / "images" / "red"
    torch_out = predictions(run, inputs, tmp_path / "p_torch.csv")
    onnx_out = predictions(run, inputs, tmp_path / "p_onnx.csv", "--engine", "onnx")
    assert_same_predictions(torch_out, onnx_out)
    ok(
        run_cli(
            "predict",
            str(run),
            "-i",
            str(inputs),
            "-o",
            str(tmp_path / "i8.csv"),
            "--engine",
            "onnx-int8",
        )
    )


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_tabular_export_parity_and_predict_engine_onnx(tmp_path: Path, problem: str) -> None:
    from test_tabular import imbalanced_table, linear_table, write_config

    if problem == "classification":
        frame = imbalanced_table(200)
        cfg = write_config(
            tmp_path,
            task="tabular-classification",
            data={"label": "label", "target": None, "columns": {}},
            trainer={"epochs": 3},
        )
    else:
        frame = linear_table(200)
        cfg = write_config(tmp_path, trainer={"epochs": 3})
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.head(40).to_csv(tmp_path / "new.csv", index=False)
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    out = ok(export_cli(str(run), "-o", str(tmp_path / "export"), "--quantize", "int8"))
    assert parity_lines(out)["fp32"][1] == 100.0, out
    assert (tmp_path / "export" / "tabular_preprocess.json").is_file()  # the feature encoders
    assert (tmp_path / "export" / "mlp.json").is_file()
    engine = ("--engine", "onnx", "--onnx-dir", str(tmp_path / "export"))
    torch_out = predictions(run, tmp_path / "new.csv", tmp_path / "p_torch.csv")
    onnx_out = predictions(run, tmp_path / "new.csv", tmp_path / "p_onnx.csv", *engine)
    if problem == "classification":
        assert_same_predictions(torch_out, onnx_out)
    else:
        assert list(torch_out.columns) == list(onnx_out.columns)
        np.testing.assert_allclose(onnx_out["prediction"], torch_out["prediction"], rtol=1e-5)


# -- the documented snippet ---------------------------------------------------------------------


def test_docs_export_commands_and_snippet_reproduce_tuneforge_predict(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """docs/export.md's commands, then its onnxruntime snippet, on a tiny-BERT run of the
    quickstart's data: the snippet's probabilities are tuneforge predict's."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    ok(
        run_cli(
            "run",
            "examples/support-tickets/config.yaml",
            "--set",
            f"model.checkpoint={tiny_models['bert']}",
            "--set",
            "trainer.epochs=1",
            "--set",
            "augmenters=[]",
            cwd=tmp_path,
        )
    )
    md = (ROOT / "docs" / "export.md").read_text()
    commands = [
        ln.strip()
        for block in re.findall(r"```bash\n(.*?)```", md, flags=re.S)
        for ln in block.splitlines()
        if ln.strip().startswith("tuneforge ")
    ]
    assert any(c.startswith("tuneforge export ") for c in commands)
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        extra = PLUGIN if argv[0] == "export" else []
        ok(run_cli(*argv, *extra, cwd=tmp_path))
    snippets = re.findall(r"```python\n(.*?)```", md, flags=re.S)
    assert snippets
    code = snippets[0] + "\nimport json as _j\nprint(_j.dumps(probs.tolist()))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    probs = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    run = tmp_path / "runs" / "support-tickets"
    expected = predictions(
        run, ROOT / "examples" / "support-tickets" / "new_messages.csv", tmp_path / "p.csv"
    )
    columns = [c for c in expected.columns if c.startswith("prob_")]
    np.testing.assert_allclose(probs, expected[columns].to_numpy(), atol=1e-5)
    printed = proc.stdout.strip().splitlines()[:-1]
    assert str(list(expected["prediction"])) in printed, proc.stdout
