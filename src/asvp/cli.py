"""Thin command-line layer the Snakemake rules call: `python -m asvp <command> ...`.

Each command parses paths and a JSON config excerpt (only the sections the step depends on,
so that Snakemake's params trigger reruns exactly the steps a change affects) and calls one
function in `asvp.rounds`, `asvp.queries`, `asvp.decision` or `asvp.report`. The cheap
commands (`label`, `select-initial`, `decide`, random and proxy `select`, a pass-through `refresh-features`) never import
torch (tests/test_cheap_jobs.py). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from asvp.errors import AsvpError


# Where a step's time goes, printed at its end (benchmarks/round_overhead.py reads it from the
# logs): the job's wall time minus the step is interpreter start-up and importing this CLI.
STEP_CLOCK: dict[str, float] = {}


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return json.loads(args.config_json)


def _torch_threads(threads: int | None) -> None:
    """Apply the rule's thread count; called only by the steps that compute with torch.

    `import torch` alone costs 3-5 s on a busy 2-core machine: more than the whole work of
    `label`, `decide` or a pass-through `refresh-features`, so those never get here.
    """
    started = time.perf_counter()
    import torch

    STEP_CLOCK["import_torch"] = time.perf_counter() - started
    if threads:
        torch.set_num_threads(threads)


def run_torch_free(args: argparse.Namespace) -> bool:
    """Run the cheap commands, which never import torch; False when `args` is not one of them."""
    if args.command in ("select-initial", "label"):
        from asvp import queries

        if args.command == "select-initial":
            queries.select_initial(args.pool, args.budget, args.seed, args.out)
        else:
            classes = None
            if args.dataset_json:
                from asvp.atomic import read_json

                classes = read_json(args.dataset_json)["classes"]
            queries.label_round(args.selected, args.pool, args.previous, args.round, args.out, classes, args.answers,
                                args.request)
    elif args.command == "request-labels":
        from asvp import queries

        queries.request_labels(args.selected, args.pool, args.dataset_json, _config(args)["data"], args.out,
                               args.sheet, args.proxy_weights, args.features)
    elif args.command == "select" and not _needs_model(args.strategy):
        from asvp import queries

        queries.apply_strategy(args.strategy, args.budget, args.seed, args.round, args.pool, args.labelled,
                               args.selected_out, args.scores_out, config=_config(args))
    elif args.command == "select" and args.proxy_weights:
        from asvp import queries

        queries.select_with_proxy(
            args.strategy, args.budget, args.seed, args.round, args.pool, args.labelled, args.features,
            args.proxy_weights, args.selected_out, args.scores_out, _config(args),
        )
    elif args.command == "summarize":
        from asvp import report

        frame = report.summarize(args.experiment_dir, args.metrics, args.out)
        if args.rounds_out:
            runs = sorted(set(zip(frame["method"], frame["strategy"], frame["seed"].astype(int))))
            report.write_round_tables(args.experiment_dir, runs, args.rounds, args.dataset_json, args.rounds_out,
                                      args.decisions_out, args.class_counts_out)
    elif args.command == "report":
        from asvp import yardstick

        yardstick.build(args.experiment_dir, _config(args), args.out_dir)
    elif args.command == "advise":
        from asvp.advisor import advise

        print(advise(args.experiment, args.label_price, args.gpu_hour_price, args.target_accuracy, args.cpu_to_gpu_factor))
    elif args.command == "write-config":
        from asvp.config import write_effective_config

        write_effective_config(_config(args), args.layers, args.out)
    elif args.command == "validate-config":
        from asvp.config import load_config

        print(json.dumps(load_config(args.configfile), indent=2))
    elif args.command == "decide":
        from asvp.decision import decide

        record = decide(
            args.features, args.labelled, args.previous, args.round, _config(args)["decision"], args.seed, args.out
        )
        print(f"verdict {record['verdict']}: {record['reason']}")
    elif args.command == "refresh-features" and not refresh_requested(args.decision):
        from asvp import features as feature_store

        feature_store.link_features(args.previous_features, args.out)
        print("kept (linked to the previous features)")
    else:
        return False
    return True


def _needs_model(strategy_name: str) -> bool:
    from asvp.queries import needs_model

    return needs_model(strategy_name)


def refresh_requested(decision_path: str) -> bool:
    """What the round's decision.json says about the features (as `rounds.refresh_features` reads it)."""
    from asvp.atomic import read_json

    return bool(read_json(decision_path)["refresh_features"])


def _job_processes(config: dict[str, Any], gpus: int) -> int:
    """Data-parallel processes for this job: one per GPU it was given, when it runs on CUDA."""
    from asvp import distributed
    from asvp.rounds import resolve_device

    processes = distributed.job_processes(resolve_device(config["device"]), gpus)
    if processes > 1:
        print(f"data-parallel over {processes} GPUs (gpus_per_job)")
    return processes


def run_command(args: argparse.Namespace) -> None:
    """Dispatch one parsed command to the library (imports are local: `--help` stays fast)."""
    if run_torch_free(args):
        return
    _torch_threads(args.threads)
    from asvp import rounds

    if args.command == "define-pool":
        rounds.define_pool(_config(args), args.pool, args.test, args.info)
    elif args.command == "extract":
        config = _config(args)
        rounds.extract(config, args.pool, args.test, args.out, model_path=args.model,
                       processes=_job_processes(config, args.gpus))
    elif args.command == "train-proxy":
        config = _config(args)
        expected = rounds.features_identity(config) if "backbone" in config and "data" in config else None
        rounds.train_proxy_round(args.features, args.labelled, config["proxy"], args.seed, args.round, args.out,
                                 args.weights_out, expected)
    elif args.command == "select":
        rounds.select_round(
            args.strategy, args.budget, args.seed, args.round, args.pool, args.labelled, args.selected_out,
            args.scores_out, features_path=args.features, proxy_path=args.proxy, model_path=args.model,
            config=_config(args),
        )
    elif args.command == "select-single-shot":
        from asvp import queries

        queries.select_on_pretrained_features(args.budget, args.seed, args.round, args.pool, args.features,
                                              args.selected_out, args.scores_out, _config(args))
    elif args.command == "refresh-features":
        from asvp import evaluation

        config = _config(args)
        refreshed = evaluation.refresh_features(
            config, args.decision, args.pool, args.test, args.labelled, args.previous_features, args.seed,
            args.out, cache_dir=args.cache_dir, round_index=args.round, processes=_job_processes(config, args.gpus),
        )
        print("refreshed" if refreshed else "kept (linked to the previous features)")
    elif args.command == "evaluate":
        from asvp import evaluation

        recipe = evaluation.recipe_for(args.recipe, args.decision)
        config = _config(args)
        metrics = evaluation.finetune_and_evaluate(
            config, recipe, args.pool, args.labelled, args.test, args.seed, args.out,
            cache_dir=args.cache_dir, model_out=args.model_out, share_model=args.share_model, round_index=args.round,
            processes=_job_processes(config, args.gpus),
        )
        print(f"{recipe} accuracy {metrics['accuracy']:.4f} ({metrics['status']})")
    else:  # pragma: no cover - argparse rejects unknown commands
        raise ValueError(args.command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asvp", description="asvp-flow steps, called by the Snakemake rules")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (rules pass {threads})")
    parser.add_argument("--gpus", type=int, default=0,
                        help="GPUs the job was given (rules pass {resources.gpu}): a fine-tune or extraction on CUDA "
                             "runs one data-parallel process per GPU")
    parser.add_argument("--log", default=None, help="write the output to this log and append it to <log>.attempts")
    parser.add_argument("--timing", default=None,
                        help="record this step's wall seconds, peak memory and CPU seconds in this file, in the "
                             "columns of Snakemake's benchmark files plus `step` (a job that runs several steps)")
    parser.add_argument("--same-job", action="store_true",
                        help="a later step of the job whose first step wrote --log and --timing: append to both")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, *, config: bool = False) -> argparse.ArgumentParser:
        command_parser = sub.add_parser(name, help=help_text)
        if config:
            command_parser.add_argument("--config-json", required=True, help="JSON excerpt of the validated config")
        return command_parser

    p = add("validate-config", "validate a config file; print it with defaults filled in")
    p.add_argument("configfile")

    p = add("write-config", "write the effective config of a run (results/<experiment>/config.yaml)", config=True)
    p.add_argument("--layers", required=True, help="the config layers it was merged from, lowest first")
    p.add_argument("--out", required=True)

    p = add("define-pool", "write pool.csv, test.csv and dataset.json (seeded subsets)", config=True)
    for name in ("--pool", "--test", "--info"):
        p.add_argument(name, required=True)

    p = add("extract", "extract backbone features of pool and test images to HDF5", config=True)
    for name in ("--pool", "--test", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--model", help="fine-tuned model.pt (feature refresh); default: the pre-trained backbone")

    p = add("select-initial", "round 0: seeded random draw")
    p.add_argument("--pool", required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)

    p = add("train-proxy", "train the MLP proxy on the labelled features", config=True)
    for name in ("--features", "--labelled", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--weights-out", help="also write the weights as arrays (proxy.npz) for torch-free scoring")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--round", type=int, required=True)

    p = add("select", "score the unlabelled pool with a strategy and select a batch")
    p.add_argument("--strategy", required=True)
    for name in ("--budget", "--seed", "--round"):
        p.add_argument(name, type=int, required=True)
    for name in ("--pool", "--labelled", "--selected-out", "--scores-out"):
        p.add_argument(name, required=True)
    p.add_argument("--features", help="pool features (proxy selection)")
    p.add_argument("--proxy", help="trained proxy (proxy selection)")
    p.add_argument("--proxy-weights", help="the proxy's weights as arrays (proxy.npz): scores without torch")
    p.add_argument("--model", help="fine-tuned model.pt (standard AL selection)")
    p.add_argument("--config-json", default="{}")

    p = add("select-single-shot", "ActiveFT on the pre-trained features of the whole pool, no labels (ActiveFT(pre))",
            config=True)
    for name in ("--budget", "--seed", "--round"):
        p.add_argument(name, type=int, required=True)
    for name in ("--pool", "--features", "--selected-out", "--scores-out"):
        p.add_argument(name, required=True)

    p = add("label", "the oracle: label the selection (simulated, or a person's answers) and append it to the labelled set")
    for name in ("--selected", "--pool", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--dataset-json", help="dataset.json: adds class names to labelled.csv")
    p.add_argument("--answers", help="a person's answers: labels/roundNNN.csv or a folder per class (human oracle)")
    p.add_argument("--request", help="the round's to_label.csv the answers refer to (human oracle)")
    p.add_argument("--previous", help="labelled set of the previous round (absent in round 0)")
    p.add_argument("--round", type=int, required=True)

    p = add("request-labels", "human oracle: write to_label.csv and a contact sheet of the round's selection",
            config=True)
    for name in ("--selected", "--pool", "--dataset-json", "--out", "--sheet"):
        p.add_argument(name, required=True)
    p.add_argument("--proxy-weights", help="the round's proxy.npz: its predicted class is the hint")
    p.add_argument("--features", help="the features the proxy read")


    p = add("decide", "ASVP: PED + LogME decision whether to refresh the features", config=True)
    for name in ("--features", "--labelled", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--previous", help="previous round's decision.json (absent in round 0)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--round", type=int, required=True)

    p = add("refresh-features", "ASVP: fine-tune and re-extract, or link the previous features", config=True)
    for name in ("--decision", "--pool", "--test", "--labelled", "--previous-features", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--round", type=int, default=None)
    p.add_argument("--cache-dir", help="fine-tune cache (shared with evaluate)")

    p = add("evaluate", "fine-tune the pre-trained backbone on the labelled set, then test accuracy", config=True)
    p.add_argument("--recipe", choices=["ft", "lpft", "auto"], required=True, help="auto: as decision.json says")
    for name in ("--pool", "--labelled", "--test", "--out", "--cache-dir"):
        p.add_argument(name, required=True)
    p.add_argument("--model-out", help="also write the fine-tuned model (a later step reads it)")
    p.add_argument("--share-model", action="store_true", help="keep the model in the cache for other jobs")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--round", type=int, default=None)
    p.add_argument("--decision", help="the round's decision.json (with --recipe auto)")

    p = add("summarize", "collect every round's metrics and timings into summary.csv")
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=0, help="rounds in the schedule (for rounds.csv)")
    for name in ("--dataset-json", "--rounds-out", "--decisions-out", "--class-counts-out"):
        p.add_argument(name)

    p = add("report", "saving ratios, costs, time model, per-class tables and figures for the report", config=True)
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--out-dir", required=True)

    p = add("advise", "from a finished (pilot) run: which method reaches a target accuracy at the lowest cost")
    p.add_argument("--experiment", required=True, help="results/<experiment> of a finished run")
    p.add_argument("--label-price", type=float, required=True, help="USD per label")
    p.add_argument("--gpu-hour-price", type=float, required=True, help="USD per GPU hour")
    p.add_argument("--target-accuracy", type=float, help="default: the random baseline's final accuracy")
    p.add_argument("--cpu-to-gpu-factor", type=float, default=1.0,
                   help="GPU hours per CPU hour measured, when the pilot ran on a CPU (default 1)")
    return parser


def _limit_math_threads(threads: int | None) -> None:
    """Keep numpy's BLAS to the rule's threads (1 when none are given).

    OpenBLAS otherwise starts one thread per core in every job: on the 2-core default, `decide`
    or a numpy scoring pass running beside a 1-thread fine-tune oversubscribed the CPUs, and a
    fine-tune's wall time rose to twice its CPU time. Set before numpy is first imported.
    """
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads or 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _limit_math_threads(args.threads)
    if args.log:
        from asvp.joblog import logged

        with logged(args.log, append=args.same_job):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        run_command(args)
        seconds = time.perf_counter() - started
        print(f"asvp {args.command}: {seconds:.3f} s in the step, "
              f"{STEP_CLOCK.get('import_torch', 0.0):.3f} s of it importing torch", file=sys.stderr)
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
