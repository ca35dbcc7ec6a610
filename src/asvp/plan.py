"""The experiment's plan, as the Snakefile reads it: which runs, rounds and evaluation points
exist, what each job asks of the machine, and which config keys each job's params carry.

Everything here is a plain function of the validated config (and, with people labelling, of
which answer files exist), so the DAG can be tested without Snakemake.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asvp import methods
from asvp.oracle import answered
from asvp.schedule import cumulative_labels, evaluation_rounds
from asvp.strategies.base import STRATEGIES

# Keys that choose which jobs exist, not what a job computes: left out of params so that
# changing them never reruns the jobs that remain.
PLANNING_KEYS: dict[str, tuple[str, ...]] = {"evaluation": ("at", "deliver", "random_beyond", "finetune_cache")}
# Keys added after results existed, left out of params while they hold the value that behaves
# as before they existed: adding a key must not make every job of an existing experiment look
# changed (fine-tune cache keys hash the same excerpt). A new key with a default goes here.
NEUTRAL_VALUES: dict[str, dict[str, Any]] = {
    "data": {"bad_images": "stop", "glob": "**/*", "images": None, "classes": None, "test": None,
             "initial_labels": None, "interpolation": None, "mean": None, "std": None},
    "schedule": {"cold_start": "random"},
    "decision": {"refresh_at": None},
    "finetune": {"optimizer": "auto", "adamw": {"lr_backbone": 0.0001, "lr_head": 0.001, "weight_decay": 0.05}},
}

# How far past the methods' last evaluation point random must be evaluated for that point's
# saving ratio to be measured, not capped: a method ahead of random there needs random's curve
# to reach its accuracy (1.5x: a method saving up to a third of the labels is measured).
RANDOM_REACH = 1.5

# What a delivery folder holds (asvp.steps.evaluate.deliver): a run's final/, or with
# evaluation.deliver: all also round<r>/delivered/ at its other evaluation points.
DELIVERED_FILES = ("model.pt", "model.torchscript.pt", "predictions.csv", "labelled.csv", "metrics.json")
FINAL_FOLDER = "final"


def params_excerpt(config: dict[str, Any], *sections: str) -> dict[str, Any]:
    """The config sections a job depends on, without planning keys and keys at their neutral value."""
    def kept(section: str, key: str, value: Any) -> bool:
        neutral = NEUTRAL_VALUES.get(section, {})
        return key not in PLANNING_KEYS.get(section, ()) and not (key in neutral and neutral[key] == value)

    return {
        s: {k: v for k, v in config[s].items() if kept(s, k, v)} if isinstance(config[s], dict) else config[s]
        for s in sections
    }


def config_from_params(text: str) -> dict[str, Any]:
    """A job's config from its params JSON, with the keys `params_excerpt` left out at their
    neutral value put back, so a step reads every key of the sections it was given."""
    config = json.loads(text)
    for section, neutral in NEUTRAL_VALUES.items():
        if isinstance(config.get(section), dict):
            config[section] = {**copy.deepcopy(neutral), **config[section]}
    return config


def params_json(config: dict[str, Any], *sections: str, strategy: str | None = None) -> str:
    """Shell-quoted JSON of a job's config excerpt: its params, so it reruns only when they
    change. A selection job adds its own strategy's options only (and the device, for a
    strategy that computes on it), so changing one strategy's options reruns only its jobs."""
    return shlex.quote(json.dumps(_strategy_excerpt(config, sections, strategy), sort_keys=True))


def _strategy_excerpt(config: dict[str, Any], sections: tuple[str, ...], strategy: str | None) -> dict[str, Any]:
    excerpt = params_excerpt(config, *sections)
    if strategy is not None:
        options = config["strategy_options"].get(strategy, {})
        if options:  # absent when the strategy has none: results from before the key existed stay valid
            excerpt["strategy_options"] = {strategy: options}
        if strategy in STRATEGIES and STRATEGIES[strategy].uses_device:
            excerpt["device"] = config["device"]
    return excerpt


def round0_params_json(config: dict[str, Any], strategy: str) -> str:
    """The params of round 0's pick on the pre-trained features in a run of `strategy`: its
    picker's options, and schedule.cold_start unless it is random (then absent, so that results
    from before the key existed stay valid). select_single_shot picks with schedule.cold_start
    in round 0 when the excerpt holds it."""
    picker = round0_picker(config, strategy)
    excerpt = _strategy_excerpt(config, (), picker)
    if config["schedule"]["cold_start"] != NEUTRAL_VALUES["schedule"]["cold_start"]:
        excerpt["schedule"] = {"cold_start": config["schedule"]["cold_start"]}
    return shlex.quote(json.dumps(excerpt, sort_keys=True))


@dataclass(frozen=True)
class Resources:
    """What a job asks for: the rules pick one of these per kind of job (a cluster profile may
    override them per rule)."""

    mem_mb: int
    runtime: int  # minutes
    gpu: int = 0


SMALL = Resources(2000, 15)
PROXY = Resources(16000, 120)


def heavy(config: dict[str, Any], gpus: int = 1) -> Resources:
    """A fine-tune, an extraction or a selection with a network: a GPU unless device is cpu
    (`gpus_per_job` of them for the data-parallel fine-tunes and extractions)."""
    return Resources(64000, 1440, 0 if config["device"] == "cpu" else gpus)


def job_threads(cores: Any, cluster: bool = False) -> int:
    """Threads of a fine-tune or proxy job: half the cores, so two run side by side.

    On a 2-core machine two 1-thread fine-tunes train 17 % more images per second than one
    2-thread job (219 vs 187 img/s, MobileNetV2 at 32 px). On a cluster (no --cores: the
    executor asks for each job's threads) a profile sets them per rule; 8 is the default there.
    """
    if cluster:
        return 8
    try:
        return max(1, int(cores) // 2)
    except (TypeError, ValueError):  # --cores all: let the scheduler cap it
        return 2


def cold_start(strategy: str) -> bool:
    """Whether the strategy picks round 0 itself on the pre-trained features (else a random draw)."""
    return STRATEGIES[strategy].cold_start


def round0_picker(config: dict[str, Any], strategy: str) -> str | None:
    """The strategy that picks round 0 of a run of `strategy` on the pre-trained features
    (schedule.cold_start, else the strategy's own cold start), or None for the seeded random
    draw. It depends on the config, not on the method, so round 0 stays shared by every method
    of a seed (and its fine-tune is cached once)."""
    chosen = config["schedule"]["cold_start"]
    if chosen != "random":
        return chosen
    return strategy if cold_start(strategy) else None


def round0_methods(config: dict[str, Any]) -> tuple[str, ...]:
    """The methods whose round 0 select_initial or select_cold_start makes (ActiveFT(pre)'s is a
    single shot); none when round 0's labels are given (data.initial_labels)."""
    return () if initial_labels(config) else methods.names(lambda m: not m.single_shot)


def initial_labels(config: dict[str, Any]) -> bool:
    """Whether round 0's labels are given (data.initial_labels) instead of selected."""
    return config["data"]["initial_labels"] is not None


def proxy_round_methods(decides: bool, human_oracle: bool) -> tuple[str, ...]:
    """The proxy methods whose later rounds select_proxy (decides False) or select_proxy_decide
    (True) runs: with people labelling, the decision is a job of its own, so select_proxy runs
    them all."""
    if human_oracle:
        return () if decides else methods.names(lambda m: m.selection == "proxy")
    return methods.names(lambda m: m.selection == "proxy" and m.decides == decides)


def finetune_sections(method: str) -> tuple[str, ...]:
    """Config sections a method's fine-tune depends on (LP-FT, possibly decided, adds its own)."""
    extra = ("lpft",) if methods.method(method).final_recipe != "ft" else ()
    return ("data", "backbone", "finetune", "evaluation", "device", *extra)


def decision_refreshes(decision_json: str) -> bool:
    """Whether a round's decision.json says to refresh the features."""
    with open(decision_json) as handle:
        return bool(json.load(handle)["refresh_features"])


class Plan:
    """Runs, rounds and evaluation points of one validated config."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.res = f"{config['results_dir']}/{config['experiment']}"
        self.finetune_cache = config["evaluation"]["finetune_cache"] or f"{self.res}/finetunes"
        self.budgets: list[int] = config["schedule"]["budgets"]
        self.n_rounds = len(self.budgets)
        self.eval_rounds = evaluation_rounds(self.budgets, config["evaluation"]["at"])
        self.labels_after = cumulative_labels(self.budgets)
        # People label (by files or in Label Studio): selection and labelling are separate jobs.
        self.human_oracle = config["oracle"] in ("human", "label_studio")
        # Random's own rounds past the methods' last point (evaluation.random_beyond), each
        # evaluated: its curve must reach past the methods' accuracies for their saving ratios
        # to be measured rather than capped.
        self.random_points = self._random_points()
        reached = [self.labels_after[-1], *self.random_points]
        self.random_budgets = self.budgets + [b - a for a, b in zip(reached, reached[1:])]
        self._pulled: set[tuple[str, int]] = set()

    def describe(self) -> str:
        """The evaluation points, as the run prints them at start-up, and a line when the
        schedule leaves ASVP's refresh rule nothing to do."""
        points = ", ".join(f"{r} ({self.labels_after[r]} labels)" for r in self.eval_rounds)
        described = f"asvp-flow: evaluation points at rounds {points}"
        if self.random_points:
            described += (f"; random also at {', '.join(map(str, self.random_points))} labels "
                          "(evaluation.random_beyond: its curve reaches past the methods')")
        notes = [note for note in (self._idle_refresh_rule(), self._censored_points()) if note]
        return "\n".join([described, *(f"asvp-flow: {note}" for note in notes)])

    def _random_points(self) -> list[int]:
        """Label counts past the methods' last point where random is also evaluated: the list
        given, or with 'auto' the first step of the last budget at or past RANDOM_REACH x that
        point, when random is compared with another method, the oracle is simulated (people
        would have to label the baseline's extra rounds) and the pool holds that many images."""
        beyond = self.config["evaluation"]["random_beyond"]
        if beyond != "auto":
            return list(beyond)
        compared = "random" in self.config["methods"] and len(self.config["methods"]) > 1
        if not compared or self.human_oracle:
            return []
        point = self.random_points_to_add()[-1]
        pool = self.config["data"]["pool_subset"]
        return [point] if pool is None or point <= pool else []

    def budgets_of(self, method: str) -> list[int]:
        """The labels each round of a method's run adds: random's runs on past the last point."""
        return self.random_budgets if method == "random" else self.budgets

    def eval_rounds_of(self, method: str) -> list[int]:
        """The rounds where a method's final model is trained and tested."""
        extra = range(self.n_rounds, len(self.random_budgets)) if method == "random" else range(0)
        return [*self.eval_rounds, *extra]

    def random_points_to_add(self) -> list[int]:
        """Label counts random would need, past the methods' last evaluation point, for no method
        point to be censored: steps of the last budget up to RANDOM_REACH x that point."""
        last, step = self.labels_after[self.eval_rounds[-1]], self.budgets[-1]
        count = math.ceil((RANDOM_REACH * last - last) / step)
        return [last + step * k for k in range(1, count + 1)]

    def _censored_points(self) -> str | None:
        """Why the saving ratio cannot be measured at the methods' last evaluation points, if random
        is compared with other methods and evaluated no further than they are."""
        compared = [m for m in self.config["methods"] if m != "random"]
        if "random" not in self.config["methods"] or not compared or self.random_points:
            return None
        last = self.labels_after[self.eval_rounds[-1]]
        caps = [f"{n} labels at most {(last - n) / last:.0%}" for n in
                [self.labels_after[r] for r in self.eval_rounds[-2:-1]] + [last]]
        points = ", ".join(str(n) for n in self.random_points_to_add())
        return (f"WARNING: random is evaluated no further than the methods' last point ({last} labels): a saving "
                f"ratio there is read off random's curve only up to its end, so it can show {' and '.join(caps)} "
                f"(reported as a bound, '>='); random evaluated at {points} labels ({RANDOM_REACH:g}x {last}) "
                "would measure them (evaluation.random_beyond)")

    def _idle_refresh_rule(self) -> str | None:
        """Why the refresh rule can never change a selection here, if it cannot."""
        deciding = [m for m in self.config["methods"] if methods.method(m).decides]
        if not deciding:
            return None
        who = ", ".join(deciding)
        if self.config["decision"]["max_refreshes"] == 0:
            return f"decision.max_refreshes is 0: {who} never refresh their features"
        if self.n_rounds < 3:
            # The rule compares round t with round t-1, and a refresh after round t serves round t+1's selection.
            return (f"schedule.budgets has {self.n_rounds} round(s): the refresh rule needs a round to compare with "
                    f"and one after it, so {who} cannot select on refreshed features; give budgets 3 or more rounds")
        return None

    def runs(self) -> Iterator[tuple[str, str, int]]:
        for name in self.config["methods"]:
            for strategy in methods.strategies_of(name, self.config["strategies"]):
                for seed in self.config["seeds"]:
                    yield name, strategy, seed

    def run_dir(self, method: str, strategy: str, seed: int) -> str:
        return f"{self.res}/{method}/{strategy}/seed{seed}"

    def rounds_of(self, method: str) -> list[int]:
        """The rounds a method's run has: single-shot methods only select at evaluation points."""
        return list(self.eval_rounds) if methods.method(method).single_shot else list(range(len(self.budgets_of(method))))

    def labelled_rounds(self, method: str, strategy: str, seed: int) -> list[int]:
        """Rounds whose labels can be had now: every round with the simulated oracle; with people,
        the rounds in order up to the first one whose answers are not there yet."""
        rounds = self.rounds_of(method)
        if not self.human_oracle:
            return rounds
        for k, r in enumerate(rounds):
            if r == 0 and initial_labels(self.config):
                continue
            self._pull_label_studio(self.run_dir(method, strategy, seed), r)
            if answered(self.run_dir(method, strategy, seed), r) is None:
                return rounds[:k]
        return rounds

    def _pull_label_studio(self, run_dir: str, r: int) -> None:
        """With `oracle: label_studio`, fetch a pushed round's annotations into labels/round{r}.json
        (once per planning), until the round is labelled: a correction made in Label Studio
        after a refused export reaches the next run."""
        from asvp import label_studio
        from asvp.oracle import answers_folder, answers_path, export_path

        pushed = Path(run_dir) / f"round{r:03d}" / label_studio.PUSHED_FILE
        if (self.config["oracle"] != "label_studio" or (run_dir, r) in self._pulled or not pushed.is_file()
                or (Path(run_dir) / f"round{r:03d}" / "labelled.csv").is_file()
                or answers_path(run_dir, r).is_file() or answers_folder(run_dir, r).is_dir()):
            return
        self._pulled.add((run_dir, r))
        label_studio.pull_round(self.config["label_studio"], run_dir, r, export_path(run_dir, r))

    def pending_requests(self) -> list[tuple[str, int]]:
        """(run folder, round) of every run waiting for a person's answers."""
        waiting = []
        for run in self.runs():
            done = set(self.labelled_rounds(*run))
            remaining = [r for r in self.rounds_of(run[0]) if r not in done]
            if remaining:
                waiting.append((self.run_dir(*run), remaining[0]))
        return waiting

    def request_files(self) -> list[str]:
        """to_label.csv and its contact sheet of every round waiting for a person."""
        return [f"{folder}/round{r:03d}/{name}" for folder, r in self.pending_requests()
                for name in ("to_label.csv", "to_label.png")]

    def metrics_files(self) -> list[str]:
        """metrics.json of every evaluation point whose labels exist (the curves' points)."""
        labelled = {run: set(self.labelled_rounds(*run)) & set(self.eval_rounds_of(run[0])) for run in self.runs()}
        return [f"{self.run_dir(*run)}/round{r:03d}/metrics.json"
                for r in range(len(self.random_budgets)) for run in labelled if r in labelled[run]]

    def round_files(self) -> list[str]:
        """A cheap file of every round in ascending order: keeps DAG recursion shallow for long runs."""
        labelled = {run: set(self.labelled_rounds(*run)) for run in self.runs()}
        return [f"{self.run_dir(*run)}/round{r:03d}/{name}"
                for r in range(len(self.random_budgets)) for run in labelled if r in labelled[run]
                for name in ["labelled.csv"] + (["decision.json"] if methods.method(run[0]).decides else [])]

    def delivered_rounds(self, method: str) -> list[int]:
        """Evaluation points whose model is delivered: the last round, or every one with deliver: all
        (random's own points past the last round extend its curve only: none of them)."""
        evaluated = [r for r in self.rounds_of(method) if r in self.eval_rounds]
        return evaluated if self.config["evaluation"]["deliver"] == "all" else [self.n_rounds - 1]

    def delivery_folder(self, r: int) -> str:
        """Where round r's delivery goes inside a run folder."""
        return FINAL_FOLDER if r == self.n_rounds - 1 else f"round{r:03d}/delivered"

    def delivery_round(self, folder: str) -> int:
        """The round a delivery folder (`delivery_folder`) comes from."""
        return self.n_rounds - 1 if folder == FINAL_FOLDER else int(folder.split("/")[0].removeprefix("round"))

    def delivery_files(self) -> list[str]:
        """Every delivered file of every run, at the delivery points whose labels exist."""
        files = []
        for run in self.runs():
            labelled = set(self.labelled_rounds(*run))
            for r in self.delivered_rounds(run[0]):
                if r in labelled:
                    files += [f"{self.run_dir(*run)}/{self.delivery_folder(r)}/{name}" for name in DELIVERED_FILES]
        return files

    def shares_model(self, method: str, r: int) -> bool:
        """Whether round r's fine-tune keeps its model in the cache for another job: round 0's for
        standard AL's round-1 selection, a delivery point's for the delivery."""
        return (r == 0 and self.shares_round0_model()) or r in self.delivered_rounds(method)

    def shares_round0_model(self) -> bool:
        """Round 0 is the same fine-tune for every method of a seed; standard AL needs its model."""
        return any(methods.method(m).finetunes_every_round for m in self.config["methods"])
