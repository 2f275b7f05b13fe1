"""The ``tuneforge`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.console import Console
from tuneforge.errors import UserError
from tuneforge.registry import RegistryError

BUILTIN_COMMANDS = ("run", "validate", "predict", "evaluate", "plugins", "components", "config")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _add_plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--disable-plugin",
        "-p",
        action="append",
        default=[],
        metavar="NAME",
        help="do not load this plugin (repeatable; also TUNEFORGE_DISABLE_PLUGINS=a,b). Note: "
        "-p DISABLES here (pytest's -p loads); pytest's -p no:NAME form is accepted too",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE_OR_MODULE",
        help="load hook implementations from a local .py file (a relative path is taken from "
        "the working directory) or an importable module (repeatable)",
    )
    p.add_argument(
        "--strict-plugins",
        action="store_true",
        default=None,
        help="fail when a plugin cannot be loaded (also TUNEFORGE_STRICT_PLUGINS=1)",
    )


def _add_verbosity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="print only the results and warnings")
    g.add_argument("-v", "--verbose", action="store_true", help="also print a line every few steps")


def _console(args: argparse.Namespace) -> Console:
    mode = (
        "quiet"
        if getattr(args, "quiet", False)
        else "verbose"
        if getattr(args, "verbose", False)
        else "normal"
    )
    return Console(mode)


def build_parser(extra_commands: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge", description="Fine-tune models the right way."
    )
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a config: validate, split, balance, train, evaluate")
    p.add_argument("config", type=Path, nargs="?", default=None)
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue a killed run (its output.dir) from its last training-state checkpoint",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, e.g. --set trainer.lr=1e-4 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="repeat the run with trainer seeds 0..N-1 on the same split (trainer.seeds): "
        "mean, std and 95%% interval of every metric",
    )
    _add_verbosity_args(p)
    _add_plugin_args(p)

    p = sub.add_parser(
        "validate",
        help="data-quality report only (no training; writes nothing but --show-augmented images)",
    )
    p.add_argument("config", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument(
        "--show-augmented",
        type=int,
        default=None,
        metavar="N",
        help="also show what the augmenters make of N training examples (drawn with "
        "trainer.seed), before -> after; image tasks write PNGs into --preview-dir",
    )
    p.add_argument(
        "--preview-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="a new or empty folder for --show-augmented's image files (default: a new "
        "temporary folder, printed); never inside the run folder",
    )
    _add_plugin_args(p)

    p = sub.add_parser("predict", help="predict with a finished run's checkpoint")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument(
        "--input",
        "-i",
        type=Path,
        required=True,
        help="CSV/TSV/JSONL/Parquet with the input columns",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="where to write predictions (default RUN/predictions/<input>.csv)",
    )
    p.add_argument(
        "--engine",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="torch: the checkpoint (default); onnx / onnx-int8: the run's ONNX export "
        "(tuneforge export RUN --format onnx [--quantize int8]) with onnxruntime on the CPU",
    )
    p.add_argument(
        "--onnx-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the export folder for --engine onnx (default RUN/onnx)",
    )
    _add_plugin_args(p)

    p = sub.add_parser(
        "evaluate", help="score a completed run's model on a labelled file (every metric)"
    )
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument(
        "--input",
        "-i",
        type=Path,
        required=True,
        help="CSV/TSV/JSONL/Parquet with the input columns and the label (target) column",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the evaluation's name: results go to RUN/evaluations/NAME/ (default: the input "
        "file's stem); an earlier evaluation of that name is replaced",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    _add_plugin_args(p)

    p = sub.add_parser("plugins", help="list installed plugins, their hooks and components")
    p.add_argument("--json", action="store_true")
    _add_plugin_args(p)

    p = sub.add_parser("components", help="list registered components, optionally of one kind")
    p.add_argument("kind", nargs="?", default=None)
    p.add_argument("--json", action="store_true")
    _add_plugin_args(p)

    p = sub.add_parser("config", help="config helpers")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    cp = csub.add_parser("schema", help="print the JSON Schema of run configs (for editors)")
    _add_plugin_args(cp)

    for name, cmd in (extra_commands or {}).items():
        cp = sub.add_parser(name, help=cmd.help)  # declared on Command
        cmd.add_arguments(cp)
        _add_plugin_args(cp)
        cp.set_defaults(plugin_command=cmd)
    return parser


def _manager(args: argparse.Namespace, cfg: Any = None, base_dir: Path | None = None) -> Any:
    from tuneforge.manager import make_plugin_manager

    return make_plugin_manager(
        cfg, base_dir, disable=args.disable_plugin, local=args.plugin, strict=args.strict_plugins
    )


def _load(args: argparse.Namespace) -> tuple[Any, Path, dict[str, Any], list[tuple[str, Any]]]:
    from tuneforge.config import build_config, parse_overrides, read_yaml

    raw = read_yaml(args.config)
    overrides = parse_overrides(args.overrides)
    cfg = build_config(raw, overrides)
    return cfg, args.config.resolve().parent, raw, overrides


def cmd_run(args: argparse.Namespace) -> int:
    from tuneforge.resume import resume_run
    from tuneforge.training import run

    if args.resume is not None:
        if args.config is not None or args.overrides or args.overwrite or args.seeds:
            raise UserError(
                "--resume continues a run with the config it started with: give no CONFIG, "
                "--set, --seeds or --overwrite"
            )
        resume_run(
            args.resume, _console(args), args.disable_plugin, args.plugin, args.strict_plugins
        )
        return 0
    if args.config is None:
        raise UserError("run: give a CONFIG file (or --resume RUN to continue a killed run)")
    if args.seeds is not None:  # trainer.seeds [0..N-1], after any --set
        from tuneforge.config import MAX_REPEATS

        if not 1 <= args.seeds <= MAX_REPEATS:
            raise UserError(f"--seeds: give a number from 1 to {MAX_REPEATS}, not {args.seeds}")
        args.overrides.append(f"trainer.seeds={list(range(args.seeds))}")
    cfg, base, raw, overrides = _load(args)
    pm = _manager(args, cfg, base)
    run(cfg, base, pm, _console(args), overwrite=args.overwrite, raw=raw, overrides=overrides)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from tuneforge.prepare import leakage_check, prepare, run_validators, split_data

    cfg, base, _, _ = _load(args)
    if args.show_augmented is not None:
        from tuneforge.preview import check_request

        check_request(args.show_augmented, args.preview_dir, cfg.output.dir)
    elif args.preview_dir is not None:
        raise UserError("--preview-dir is where --show-augmented N writes: give --show-augmented")
    pm = _manager(args, cfg, base)
    prep = prepare(cfg, base, pm)
    data = run_validators(prep)
    folds = []
    for j in range(cfg.split.folds or 0):  # cross-validation: each member's split, as run makes it
        prep.fold = (j, cfg.split.folds)
        folds.append(split_data(prep, data))
    split = folds[0] if folds else split_data(prep, data)
    prep.findings.append(leakage_check(prep, data, split))
    report = {
        "source": data.source,
        "rows_loaded": len(prep.data),
        "rows_kept": len(data),
        "findings": [f.as_dict() for f in prep.findings],
        "split": split.sizes(),
        "split_notes": split.notes,
        "split_given": split.given,
        "folds": [f.sizes() for f in folds] or None,
        "class_counts": {
            s: prep.task.label_counts(data, getattr(split, s)) for s in ("train", "val", "test")
        },
    }
    preview = None
    if args.show_augmented is not None:
        from tuneforge.preview import show_augmented

        preview = show_augmented(prep, data, split, args.show_augmented, args.preview_dir)
        report["augmented"] = preview.as_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _say(f"{data.source}: {len(prep.data)} rows loaded, {len(data)} kept")
    for f in prep.findings:
        _say(f"  [{f.severity}] {f.validator}: {f.message} -> {f.action}")
    if not prep.findings:
        _say("  no findings")
    if folds:
        _say(f"cross-validation: {len(folds)} folds (fold k's rows are member fold-k's test split)")
        for j, f in enumerate(folds):
            _say(f"  fold-{j + 1}: {f.sizes()}")
        _say("split of fold-1:")
    _say(f"split{' (given)' if split.given else ''}: {split.sizes()}")
    for note in split.notes:
        _say(f"  {note}")
    for s, counts in report["class_counts"].items():
        if counts:
            _say(f"  {s}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for line in preview.text() if preview is not None else []:
        _say(line)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tuneforge.data import check_data_path
    from tuneforge.predict import predict

    # A FIFO or a device is refused before it is opened (the task decides about folders).
    check_data_path(args.input, "input file", folder_ok=True)
    predict(
        args.run_dir,
        args.input,
        args.output,
        Console(),
        args.disable_plugin,
        args.plugin,
        engine=args.engine,
        onnx_dir=args.onnx_dir,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tuneforge.data import check_data_path
    from tuneforge.evaluate import evaluate, summary_lines
    from tuneforge.run import to_json

    check_data_path(args.input, "input file", folder_ok=True)
    # With --json, stdout holds the JSON alone: progress lines go to stderr.
    log = Console("quiet", stream=sys.stderr) if args.json else Console()
    results = evaluate(args.run_dir, args.input, args.name, log, args.disable_plugin, args.plugin)
    if args.json:
        sys.stdout.write(to_json(results))
        return 0
    for line in summary_lines(results):
        _say(line)
    _say(f"saved in {Path(args.run_dir) / 'evaluations' / results['name']}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = _manager(args)
    infos = sorted(pm.infos.values(), key=lambda i: (i.source, i.name))
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else info.target
        state = " [disabled]" if info.disabled else (" [FAILED]" if info.error else "")
        _say(f"{info.name}{state}  ({origin})")
        if info.error:
            _say(f"    error: {info.error}")
        if info.hooks:
            _say(f"    hooks: {', '.join(info.hooks)}")
        for kind, names in info.components.items():
            _say(f"    {kind}: {', '.join(names)}")
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    pm = _manager(args)
    regs = [pm.registries[args.kind]] if args.kind else list(pm.registries)
    if args.json:
        print(
            json.dumps(
                {
                    r.kind: [
                        {
                            "name": e.name,
                            "plugin": e.plugin,
                            "target": e.target_repr,
                            "description": e.summary(),
                        }
                        for e in r
                    ]
                    for r in regs
                },
                indent=2,
            )
        )
        return 0
    for reg in regs:
        if not len(reg) and not args.kind:
            continue
        _say(f"{reg.kind}:")
        for e in reg:
            desc = e.summary()
            _say(f"  {e.name:<28} {e.plugin:<14} {desc}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from tuneforge.schema import run_config_schema

    pm = _manager(args)
    print(json.dumps(run_config_schema(pm.registries), indent=2))
    return 0


HANDLERS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "plugins": cmd_plugins,
    "components": cmd_components,
    "config": cmd_config,
}


def _plugin_commands(argv: list[str]) -> dict[str, Any]:
    """Commands from plugins, loaded only when the command is not a built-in one."""
    words = [a for a in argv if not a.startswith("-")]
    wants_help = not words and ("-h" in argv or "--help" in argv)
    if not wants_help and (not words or words[0] in BUILTIN_COMMANDS):
        return {}
    pre = argparse.ArgumentParser(add_help=False)
    _add_plugin_args(pre)
    known, _ = pre.parse_known_args(argv)
    pm = _manager(known)
    return {e.name: e.load()() for e in pm.registries["commands"]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("TUNEFORGE_DEBUG"))
    if "--debug" in argv:  # taken anywhere: `tuneforge run CONFIG --debug` as well
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    try:
        parser = build_parser(_plugin_commands(argv))
        args = parser.parse_args(argv)
        if getattr(args, "plugin_command", None) is not None:
            return int(args.plugin_command.run(args) or 0)
        try:
            return HANDLERS[args.command](args)
        except SystemExit as exc:  # tuneforge never calls sys.exit(): plugin code did
            from tuneforge.errors import PluginError
            from tuneforge.manager import describe_exception, plugin_failure

            named = plugin_failure(exc)
            raise named or PluginError(
                f"a plugin {describe_exception(exc)} during {args.command}"
            ) from exc
    except (UserError, RegistryError) as exc:
        if debug:
            traceback.print_exc()
        message = " ".join(str(exc).split("\n"))  # one line, whatever the raiser wrote
        print(f"tuneforge: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tuneforge plugins | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from tuneforge.manager import describe_exception, plugin_failure

        if debug:
            traceback.print_exc()
        named = plugin_failure(exc)  # raised in a third-party plugin's code: its bug, not ours
        if named is not None:
            print(f"tuneforge: error: {named}", file=sys.stderr)
            return 2
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"tuneforge: internal error: {describe_exception(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
