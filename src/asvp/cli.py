"""The command line the Snakemake rules call: `asvp <command> ...`, one command per step.

`COMMANDS` maps each command to one step function (asvp.steps.*); its options are built from
the function's signature: a parameter `foo_bar: int` is `--foo-bar N`, `config` is
`--config-json` (the JSON excerpt of the validated config a rule passes, so that Snakemake's
params rerun exactly the steps a change affects), a dataclass parameter contributes its fields,
a `bool` is a flag, a `list[str]` takes several values, a default makes the option optional.
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import inspect
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asvp.errors import AsvpError


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    stage: str  # the timing record's name (the rules' benchmark files; asvp.step_timing)
    torch: bool = False  # imports torch (timed and set to the job's threads before the step)

    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    # rules/features.smk
    "define-pool": Command("asvp.steps.features:define_pool", "define_pool", torch=True),
    "extract": Command("asvp.steps.features:extract", "extract", torch=True),
    # rules/select.smk
    "select-initial": Command("asvp.steps.select:select_initial", "select_initial"),
    "initial-labels": Command("asvp.steps.select:initial_labels", "select_initial"),
    "select-single-shot": Command("asvp.steps.select:select_single_shot", "select", torch=True),
    "select-random": Command("asvp.steps.select:select_random", "select"),
    "train-proxy": Command("asvp.steps.select:train_proxy", "train_proxy", torch=True),
    "select-proxy": Command("asvp.steps.select:select_proxy", "select"),
    "select-model": Command("asvp.steps.select:select_model", "select", torch=True),
    "request-labels": Command("asvp.steps.select:request_labels", "request_labels"),
    "label": Command("asvp.steps.select:label", "label"),
    # rules/decide.smk
    "decide": Command("asvp.steps.decide:decide", "decide"),
    "refresh-features": Command("asvp.steps.decide:refresh_features", "refresh_features"),  # torch only to refresh
    # rules/evaluate.smk
    "evaluate": Command("asvp.steps.evaluate:evaluate", "evaluate", torch=True),
    "deliver": Command("asvp.steps.evaluate:deliver", "deliver", torch=True),
    # rules/report.smk
    "summarize": Command("asvp.steps.report:summarize", "summarize"),
    "report": Command("asvp.steps.report:report", "report"),
    "write-config": Command("asvp.steps.report:write_config", "write_config"),
    # for people, not rules
    "validate-config": Command("asvp.config:validated_json", "validate_config"),
    "advise": Command("asvp.advisor:advise", "advise"),
    "advise-backbone": Command("asvp.backbone_advisor:advise_backbone", "advise_backbone", torch=True),
    "predict": Command("asvp.delivery:predict_images", "predict", torch=True),
    "example-images": Command("asvp.data.example:write_example_images", "example_images"),
    "example-answers": Command("asvp.data.example:answer_from_key", "example_answers"),
}


def _options(parser: argparse.ArgumentParser, function: Callable[..., Any]) -> None:
    """Add one option per parameter of `function` (dataclass parameters: one per field)."""
    hints = typing.get_type_hints(function)
    for name, parameter in inspect.signature(function).parameters.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            field_hints = typing.get_type_hints(kind)
            for field in dataclasses.fields(kind):
                _option(parser, field.name, field_hints[field.name], inspect.Parameter.empty)
        else:
            _option(parser, name, kind, parameter.default)


def _option(parser: argparse.ArgumentParser, name: str, kind: Any, default: Any) -> None:
    flag = "--config-json" if name == "config" else f"--{name.replace('_', '-')}"
    optional = type(None) in typing.get_args(kind)
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if optional else kind
    if base is bool:
        parser.add_argument(flag, dest=name, action="store_true")
    elif typing.get_origin(base) is list:
        parser.add_argument(flag, dest=name, nargs="+", required=default is inspect.Parameter.empty)
    else:
        convert = {int: int, float: float}.get(base, _config_json if name == "config" else str)
        required = default is inspect.Parameter.empty and not optional
        parser.add_argument(flag, dest=name, type=convert, required=required,
                            default=None if default is inspect.Parameter.empty else default)


def _config_json(text: str) -> dict[str, Any]:
    from asvp.plan import config_from_params

    return config_from_params(text)


def _call(function: Callable[..., Any], args: argparse.Namespace) -> Any:
    """Call `function` with the parsed options, rebuilding its dataclass arguments."""
    hints = typing.get_type_hints(function)
    values = vars(args)
    kwargs = {}
    for name in inspect.signature(function).parameters:
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = hints[name](**{f.name: values[f.name] for f in dataclasses.fields(hints[name])})
        else:
            kwargs[name] = values[name]
    return function(**kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command gets its options (the others' step modules,
    and with them numpy or h5py, are then not imported: a cheap step starts faster)."""
    parser = argparse.ArgumentParser(prog="asvp", description="asvp-flow steps, called by the Snakemake rules")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the job (rules pass {threads})")
    parser.add_argument("--log", default=None, help="write the output to this log and append it to <log>.attempts")
    parser.add_argument("--timing", default=None,
                        help="record this step's wall seconds, peak memory and CPU seconds in this file, in the "
                             "columns of Snakemake's benchmark files plus `step` (a job that runs several steps)")
    parser.add_argument("--same-job", action="store_true",
                        help="a later step of the job whose first step wrote --log and --timing: append to both")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        function = command.function()
        summary = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
        _options(sub.add_parser(name, help=summary, description=summary), function)
    return parser


def run_command(args: argparse.Namespace) -> None:
    """Run the step of one parsed command (a value it returns is printed)."""
    from asvp import device

    command = COMMANDS[args.command]
    if args.threads:
        device.JOB_THREADS[:] = [args.threads]
    if command.torch:
        device.import_torch()
    result = _call(command.function(), args)
    if result is not None:
        print(result)


def _limit_math_threads(threads: int | None) -> None:
    """Keep numpy's BLAS to the rule's threads (1 when none are given).

    OpenBLAS otherwise starts one thread per core in every job: on a 2-core machine, `decide`
    or a numpy scoring pass running beside a 1-thread fine-tune oversubscribed the CPUs, and a
    fine-tune's wall time rose to twice its CPU time. Set before numpy is first imported.
    """
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads or 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _limit_math_threads(_peek_threads(argv))
    args = build_parser(next((word for word in argv if word in COMMANDS), None)).parse_args(argv)
    if args.log:
        from asvp.joblog import logged

        with logged(args.log, append=args.same_job):
            return _run(args)
    return _run(args)


def _peek_threads(argv: list[str]) -> int | None:
    """--threads, read before the parser imports the step modules (and with them numpy)."""
    for index, word in enumerate(argv):
        if word == "--threads" and index + 1 < len(argv):
            return int(argv[index + 1])
        if word.startswith("--threads="):
            return int(word.split("=", 1)[1])
    return None


def _run(args: argparse.Namespace) -> int:
    from asvp import device

    started = time.perf_counter()
    try:
        run_command(args)
        seconds = time.perf_counter() - started
        print(f"asvp {args.command}: {seconds:.3f} s in the step, "
              f"{device.IMPORT_SECONDS['torch']:.3f} s of it importing torch", file=sys.stderr)
        if args.timing:
            from asvp.step_timing import stage_of_command, write_step_benchmark

            write_step_benchmark(args.timing, stage_of_command(args.command), seconds, append=args.same_job)
    except AsvpError as exc:
        print(f"asvp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # h5py and torch.save report a full disk in their message only
        if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and "No space left on device" not in str(exc):
            raise
        # Every writer renames a finished temporary file, so nothing half-written is left under a
        # final name; extraction and fine-tuning keep their partial file / checkpoint to resume.
        filename = getattr(exc, "filename", None)
        where = f" while writing {filename}" if filename else ""
        print(f"asvp {args.command}: error: the disk is full{where} ({getattr(exc, 'strerror', None) or exc}). "
              "Free space there (or point "
              "results_dir elsewhere) and rerun the same command: finished steps are kept, extraction and fine-tuning "
              "resume from their last chunk or checkpoint.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
