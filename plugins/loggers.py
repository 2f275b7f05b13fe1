"""Built-in loggers (callbacks selected by name): ``csv``, ``tensorboard`` and ``mlflow``.

Select them in the run config::

    callbacks:
      - csv                                   # <run folder>/metrics.csv
      - tensorboard                           # <run folder>/tensorboard/
      - {name: mlflow, tracking_uri: "file:/srv/mlruns", experiment: tickets}

Each logger is a callback: an object whose lifecycle methods are marked ``@tuneforge.hookimpl``;
the pipeline registers it for the duration of the run. What each one records:

- values logged every few optimizer steps (``on_log``: ``train.loss``, ``lr``,
  ``train.samples_per_s``), with the optimizer step as x axis;
- each epoch's row (``on_epoch_end``: ``train.loss``, ``train.samples_per_s`` and every
  ``val.<metric>``), with the epoch as x axis;
- the test metrics (``on_evaluate(split="test")``) once the best checkpoint has been evaluated.

The names differ a little between backends because a TensorBoard tag or an MLflow metric key
has one x axis: the per-epoch training values are ``train_epoch/loss`` (TensorBoard) and
``train_epoch.loss`` (MLflow) so that they do not mix with the per-step ``train.loss``.

This module stays light (listing plugins imports it): torch, tensorboard and mlflow are
imported inside the methods that need them. A missing package is reported when the config is
resolved, before anything is written: ``callbacks[1]: tensorboard: needs the package
'tensorboard' (pip install tensorboard)``.

The csv ``file`` and a relative tensorboard ``log_dir`` are :data:`tuneforge.run.RunPath`
parameters: inside the run folder, checked when the config is read (``callbacks[0].file: ...``) and
again, symbolic links resolved, when the file is opened (:func:`tuneforge.run.confined`). The MLflow
tracking store and an absolute tensorboard ``log_dir`` are outside it on purpose: stores shared by
many runs, which only ever add to them.

Passwords in tracking URIs (``postgresql://user:secret@host/db``) are masked as ``***``
everywhere the loggers print or store them: see :func:`mask_uri` and :func:`mask_secrets`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from tuneforge import hookimpl
from tuneforge.components import Component, StrictConfig
from tuneforge.errors import UserError
from tuneforge.hookspecs import Register
from tuneforge.run import RunContext, RunPath, confined, inside_problem
from tuneforge.secrets import mask_secrets, mask_uri

# -- masking secrets ------------------------------------------------------------------------

# -- helpers --------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str]:
    """``"val.accuracy"`` -> ``("val", "accuracy")``; a bare ``"lr"`` is a training value."""
    split, dot, name = key.partition(".")
    return (split, name) if dot else ("train", key)


def _writable_dir_problem(path: Path) -> str | None:
    """Why the folder ``path`` cannot be created or written to, or None when it can.

    Writes nothing that stays: the probe is an empty folder, removed at once.
    """
    path = path.expanduser().absolute()
    probe_in = path
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            return f"no existing folder above {path}"
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return f"{probe_in} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tuneforge-probe-", dir=probe_in))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"cannot create folders in {probe_in} ({reason})"
    return None


def _file_uri_path(uri: str) -> Path | None:
    """The local folder of a ``file:`` URI or a plain path; None for other schemes."""
    if re.match(r"^[A-Za-z]:[\\/]", uri):  # a Windows drive, not a scheme
        return Path(uri)
    parts = urlsplit(uri)
    if parts.scheme == "":
        return Path(uri)
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise PydanticCustomError(
            "file_uri_host",
            "a file: URI names a local folder (file:/path or file:///path), not a host",
        )
    return Path(url2pathname(unquote(parts.path)))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"lr": 0.001}}`` -> ``{"trainer.lr": 0.001}``; lists stay whole."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _warn(text: str) -> None:
    print(f"tuneforge: warning: {text}", file=sys.stderr, flush=True)


def _resolved_config(run: RunContext) -> dict[str, Any]:
    """The resolved config the run folder holds (absolute data path), else the run's config."""
    import yaml

    path = Path(run.run_dir) / "config.yaml"
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            return loaded
    from tuneforge.config import dump_config

    return dump_config(run.config)


def _config_text(run: RunContext) -> str:
    import yaml

    text = yaml.safe_dump(_resolved_config(run), sort_keys=False, allow_unicode=True)
    return mask_secrets(text)


class _Logger(Component):
    """What the three loggers share: the run they follow and whether it has ended."""

    def __init__(self, config: StrictConfig | None = None) -> None:
        super().__init__(config)
        self._run: RunContext | None = None
        self._ended = False
        self._test_logged = False
        self._last_epoch = 0

    def _active(self, run: RunContext) -> bool:
        return self._run is not None and not self._ended and run is self._run

    def _log_split(self, split: str, metrics: dict[str, float]) -> None:
        """Write the metrics of one evaluated split (``test``; ``val`` comes per epoch)."""
        raise NotImplementedError

    @hookimpl
    def on_evaluate(self, run: RunContext, split: str, metrics: dict[str, float]) -> None:
        # Validation metrics arrive again, with their epoch, in on_epoch_end.
        if self._active(run) and split != "val":
            self._log_split(split, metrics)
            self._test_logged = self._test_logged or split == "test"

    def _log_final_test(self, metrics: dict[str, float], status: str) -> None:
        """Test metrics handed to on_run_end that no on_evaluate delivered."""
        if status == "completed" and metrics and not self._test_logged:
            self._log_split("test", metrics)


# -- csv ------------------------------------------------------------------------------------


class CsvLogger(_Logger):
    """Every logged value as one row of a CSV file in the run folder, flushed as it is written.

    Columns: ``step`` (optimizer step, per-step values), ``epoch`` (per-epoch values),
    ``split`` (``train``, ``val``, ``test``), ``name``, ``value``, ``time`` (Unix seconds).
    """

    COLUMNS = ("step", "epoch", "split", "name", "value", "time")

    class Config(StrictConfig):
        file: RunPath = Field(
            "metrics.csv",
            min_length=1,
            description="the CSV file, relative to the run folder and inside it",
        )

    def __init__(self, config: StrictConfig | None = None) -> None:
        super().__init__(config)
        self._fh: Any = None
        self._writer: Any = None
        self.path: Path | None = None

    @hookimpl
    def on_run_start(self, run: RunContext) -> None:
        self.path = confined(Path(run.run_dir), self.config.file, "csv logger: file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at the file itself is not written through.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            self._fh = open(os.open(self.path, flags, 0o666), "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise UserError(f"csv logger: cannot write {self.path}: {exc.strerror}") from None
        self._writer = csv.writer(self._fh)
        self._writer.writerow(self.COLUMNS)
        self._fh.flush()
        self._run = run

    def _row(self, step: Any, epoch: Any, key: str, value: Any, now: float) -> None:
        split, name = _split_key(key)
        self._writer.writerow(
            ["" if step is None else step, "" if epoch is None else epoch, split, name, value, now]
        )

    def _rows(self, step: Any, epoch: Any, values: dict[str, Any], prefix: str = "") -> None:
        now = time.time()
        for key, value in values.items():
            self._row(step, epoch, f"{prefix}{key}", value, now)
        self._fh.flush()

    @hookimpl
    def on_log(self, run: RunContext, step: int, values: dict[str, float]) -> None:
        if self._active(run):
            self._rows(step, None, values)

    @hookimpl
    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        if self._active(run):
            self._last_epoch = epoch
            self._rows(None, epoch, {k: v for k, v in metrics.items() if k != "epoch"})

    def _log_split(self, split: str, metrics: dict[str, float]) -> None:
        self._rows(None, None, metrics, prefix=f"{split}.")

    @hookimpl
    def on_run_end(self, run: RunContext, metrics: dict[str, float], status: str) -> None:
        if not self._active(run):
            return
        self._ended = True
        try:
            self._log_final_test(metrics, status)
        except Exception as exc:  # never lose a finished run to a logging problem
            _warn(f"csv logger: {type(exc).__name__}: {exc}")
        finally:
            self._fh.close()


# -- tensorboard ----------------------------------------------------------------------------


def _needs(package: str, pip: str) -> None:
    """Import ``package`` now so that a missing one is a config error, not a crash mid-run."""
    try:
        __import__(package)
    except ImportError as exc:
        # instantiate() turns a ValueError into "callbacks[i]: <name>: <message>".
        raise ValueError(
            f"needs the package {package!r}, which cannot be imported ({exc}); pip install {pip}"
        ) from None


class TensorBoardLogger(_Logger):
    """Scalars for TensorBoard (``tensorboard --logdir <run folder>/tensorboard``).

    Tags: ``train/loss``, ``train/lr``, ``train/samples_per_s`` per optimizer step;
    ``val/<metric>`` and ``train_epoch/<value>`` per epoch; ``test/<metric>`` at the last
    epoch; the resolved config (passwords masked) as the text ``config``.
    """

    class Config(StrictConfig):
        log_dir: str = Field(
            "tensorboard",
            min_length=1,
            description="event-file folder relative to the run folder (and inside it); an "
            "absolute folder is a store shared by many runs, each adding its own event files "
            "to a sub-folder named after its run",
        )
        flush_secs: int = Field(30, ge=1, description="how often pending events are written")

        @field_validator("log_dir")
        @classmethod
        def _writable(cls, value: str) -> str:
            path = Path(value).expanduser()
            if path.is_absolute():
                problem = _writable_dir_problem(path)
                if problem:
                    raise PydanticCustomError("log_dir", "not writable: {p}", {"p": problem})
                return value
            problem = inside_problem(value)  # a relative folder stays inside the run folder
            if problem is not None:
                raise PydanticCustomError("run_path", "{problem}", {"problem": problem})
            return value

    def __init__(self, config: StrictConfig | None = None) -> None:
        super().__init__(config)
        _needs("tensorboard", "tensorboard")
        self._writer: Any = None
        self.log_dir: Path | None = None

    @hookimpl
    def on_run_start(self, run: RunContext) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(f"tensorboard logger: {exc} (pip install tensorboard)") from None
        path = Path(self.config.log_dir).expanduser()
        if path.is_absolute():  # a shared store: event files never overwrite one another
            self.log_dir = path / Path(run.final_dir).name
        else:
            self.log_dir = confined(Path(run.run_dir), self.config.log_dir, "tensorboard: log_dir")
        try:
            self._writer = SummaryWriter(str(self.log_dir), flush_secs=self.config.flush_secs)
        except OSError as exc:
            raise UserError(
                f"tensorboard logger: cannot write {self.log_dir}: {exc.strerror}"
            ) from None
        self._run = run
        text = "\n".join(f"    {line}" for line in _config_text(run).splitlines())
        self._writer.add_text("config", text, 0)
        self._writer.flush()

    @staticmethod
    def _tag(key: str, group: str | None = None) -> str:
        split, name = _split_key(key)
        return f"{group or split}/{name}"

    @hookimpl
    def on_log(self, run: RunContext, step: int, values: dict[str, float]) -> None:
        if self._active(run):
            for key, value in values.items():
                self._writer.add_scalar(self._tag(key), value, step)

    @hookimpl
    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        if not self._active(run):
            return
        self._last_epoch = epoch
        for key, value in metrics.items():
            if key == "epoch":
                continue
            split, _ = _split_key(key)
            self._writer.add_scalar(
                self._tag(key, "train_epoch" if split == "train" else None), value, epoch
            )
        self._writer.flush()  # a crash keeps every finished epoch

    def _log_split(self, split: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(f"{split}/{name}", value, self._last_epoch)
        self._writer.flush()

    @hookimpl
    def on_run_end(self, run: RunContext, metrics: dict[str, float], status: str) -> None:
        if not self._active(run):
            return
        self._ended = True
        try:
            self._log_final_test(metrics, status)
        except Exception as exc:  # never lose a finished run to a logging problem
            _warn(f"tensorboard logger: {type(exc).__name__}: {exc}")
        finally:
            self._writer.close()


# -- mlflow ---------------------------------------------------------------------------------

_MLFLOW_STATUS = {"completed": "FINISHED", "trained": "FINISHED", "failed": "FAILED"}
_ARTIFACTS = ("config.yaml", "metrics.json", "findings.json", "split.json", "labels.json")


@contextlib.contextmanager
def _quiet_store() -> Iterator[None]:
    """Silence MLflow's and its database layer's own logging and warnings while connecting.

    An unreachable store makes them log multi-line warnings with tracebacks before the
    exception that the logger turns into its one-line error.
    """
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "sqlalchemy")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()


class MlflowLogger(_Logger):
    """An MLflow run per tuneforge run: params, metrics, artifacts and the final status.

    Params are the resolved config flattened (``trainer.lr``, ``model.name``...; lists as
    JSON). Metrics: ``train.loss``, ``lr``... per step, ``val.<metric>`` and
    ``train_epoch.<value>`` per epoch, ``test.<metric>``. Artifacts at the end: the run
    folder's ``config.yaml`` (passwords masked), ``metrics.json``, ``findings.json``,
    ``split.json``, ``labels.json`` and, with ``log_checkpoint: true``, ``checkpoint/``.
    The run ends ``FINISHED`` or ``FAILED`` as the tuneforge run does.
    """

    class Config(StrictConfig):
        tracking_uri: str | None = Field(
            None,
            min_length=1,
            description="MLflow tracking URI (file:/path, sqlite:///x.db, http://host:5000...); "
            "default: $MLFLOW_TRACKING_URI, else the local store ./mlruns",
        )
        experiment: str = Field("tuneforge", min_length=1, description="experiment name")
        run_name: str | None = Field(
            None, min_length=1, description="MLflow run name; default: the run folder's name"
        )
        log_checkpoint: bool = Field(False, description="also upload the best checkpoint")

        @field_validator("tracking_uri")
        @classmethod
        def _local_store_writable(cls, value: str | None) -> str | None:
            if value is not None:
                path = _file_uri_path(value)
                if path is not None:
                    problem = _writable_dir_problem(path)
                    if problem:
                        raise PydanticCustomError(
                            "tracking_uri", "not writable: {p}", {"p": problem}
                        )
            return value

    def __init__(self, config: StrictConfig | None = None) -> None:
        super().__init__(config)
        _needs("mlflow", "mlflow-skinny")
        self.tracking_uri = self.config.tracking_uri or _default_tracking_uri()
        self._client: Any = None
        self.run_id: str | None = None

    @property
    def masked_uri(self) -> str:
        return mask_uri(self.tracking_uri)

    def _is_local(self) -> bool:
        try:
            return _file_uri_path(self.tracking_uri) is not None
        except PydanticCustomError:
            return False

    def _fail(self, action: str, exc: BaseException) -> UserError:
        detail = mask_secrets(" ".join(str(exc).split())).split(" See ")[0][:300]
        return UserError(
            f"mlflow logger: {action} at {self.masked_uri} failed: {type(exc).__name__}: {detail}"
        )

    @hookimpl
    def on_run_start(self, run: RunContext) -> None:
        uri = self.tracking_uri
        path = _file_uri_path(uri) if self._is_local() else None
        if path is not None:
            # MLflow 3 keeps its file store behind this switch; a file: URI asks for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = path.expanduser().absolute().as_uri()
        from mlflow.tracking import MlflowClient

        name = self.config.experiment
        try:
            with _quiet_store():
                client = MlflowClient(tracking_uri=uri)
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    experiment_id = client.create_experiment(name)
                elif experiment.lifecycle_stage != "active":
                    raise UserError(
                        f"mlflow logger: experiment {name!r} at {self.masked_uri} is deleted; "
                        "restore it or choose another experiment"
                    )
                else:
                    experiment_id = experiment.experiment_id
                tags = {"tuneforge.task": run.task, "tuneforge.run_folder": str(run.final_dir)}
                if run.trial is not None:
                    tags["tuneforge.trial"] = str(run.trial)
                created = client.create_run(
                    experiment_id,
                    run_name=self.config.run_name or Path(run.final_dir).name,
                    tags=tags,
                )
        except UserError:
            raise
        except Exception as exc:
            raise self._fail("connecting to the tracking store", exc) from None
        self._client, self.run_id, self._run = client, created.info.run_id, run
        print(
            f"mlflow: run {created.info.run_name!r} ({self.run_id}) in experiment {name!r} at "
            f"{self.masked_uri}",
            flush=True,
        )
        self._log_params(run)

    def _log_params(self, run: RunContext) -> None:
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # pragma: no cover - older MLflow
            limit = 500
        flat = _flatten(_resolved_config(run))
        params = [
            Param(
                re.sub(r"[^\w./\- :]", "_", key)[:250],
                mask_secrets(_param_value(value))[:limit],
            )
            for key, value in flat.items()
        ]
        try:
            for i in range(0, len(params), 100):
                self._client.log_batch(self.run_id, params=params[i : i + 100])
        except Exception as exc:
            raise self._fail("logging params", exc) from None

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        try:
            self._client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:
            raise self._fail("logging metrics", exc) from None

    @hookimpl
    def on_log(self, run: RunContext, step: int, values: dict[str, float]) -> None:
        if self._active(run):
            self._log_metrics(values, step)

    @hookimpl
    def on_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        if not self._active(run):
            return
        self._last_epoch = epoch
        values = {}
        for key, value in metrics.items():
            if key != "epoch":
                split, name = _split_key(key)
                values[f"train_epoch.{name}" if split == "train" else key] = value
        self._log_metrics(values, epoch)

    def _log_split(self, split: str, metrics: dict[str, float]) -> None:
        self._log_metrics({f"{split}.{k}": v for k, v in metrics.items()}, self._last_epoch)

    def _log_artifacts(self, run: RunContext) -> None:
        folder = Path(run.run_dir)
        with tempfile.TemporaryDirectory(prefix="tuneforge-mlflow-") as tmp:
            for name in _ARTIFACTS:
                path = folder / name
                if not path.is_file():
                    continue
                if name == "config.yaml":  # the tracking URI may hold a password
                    masked = Path(tmp) / name
                    masked.write_text(
                        mask_secrets(path.read_text(encoding="utf-8")), encoding="utf-8"
                    )
                    path = masked
                self._client.log_artifact(self.run_id, str(path))
        if self.config.log_checkpoint and (folder / "checkpoint").is_dir():
            self._client.log_artifacts(self.run_id, str(folder / "checkpoint"), "checkpoint")

    @hookimpl
    def on_run_end(self, run: RunContext, metrics: dict[str, float], status: str) -> None:
        if not self._active(run):
            return
        self._ended = True
        # A finished run must never be lost to a tracking problem: warn instead of raising.
        try:
            self._log_final_test(metrics, status)
            if metrics and status == "trained":
                self._log_metrics({f"best_val.{k}": v for k, v in metrics.items()}, 0)
            self._log_artifacts(run)
        except Exception as exc:
            _warn(str(self._fail("logging the run end", exc)))
        try:
            self._client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(status, "KILLED"))
        except Exception as exc:
            _warn(str(self._fail("ending the run", exc)))


@hookimpl
def register_callbacks(register: Register) -> None:
    register(
        "csv",
        "tuneforge.plugins.loggers:CsvLogger",
        "every logged value as a row of metrics.csv in the run folder",
    )
    register(
        "tensorboard",
        "tuneforge.plugins.loggers:TensorBoardLogger",
        "TensorBoard scalars (per step and per epoch) and the config, under <run>/tensorboard",
    )
    register(
        "mlflow",
        "tuneforge.plugins.loggers:MlflowLogger",
        "an MLflow run: config params, metrics, artifacts, final status",
    )
