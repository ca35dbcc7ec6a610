"""Load and validate the workflow config against `rules/schemas/config.schema.yaml`.

One place validates the config (scikit-learn's habit): the Snakefile calls `validate_config` at
start-up, so a typo in a key or a wrong type stops the run before any job starts, with a message
that names the key, what is allowed, and the file. Defaults from the schema are filled in here,
so rules and the library see one complete config.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from asvp.errors import ConfigError
from asvp.schedule import evaluation_rounds

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "rules" / "schemas" / "config.schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the JSON schema (written in YAML)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config schema {path} is missing; reinstall asvp-flow from its checkout")
    return yaml.safe_load(path.read_text())


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that validating also fills in schema defaults."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


# Keys that earlier versions of the schema had, and what replaced each: a config that still sets
# one is told where the setting went instead of only that the key is unknown.
_FT_STAGE = "LP-FT's FT stage now uses finetune.{0} (one recipe for FT and LP-FT)"
_FIXED = "it is fixed at {0} ({1})"
REMOVED_KEYS: dict[str, str] = {
    "backbone.sha256_prefix": "the hash in a torchvision-style file name (name-<hex>.pth) is still checked; "
                              "check other files with sha256sum",
    "features.chunk_rows": _FIXED.format(4096, "asvp.extraction.CHUNK_ROWS"),
    "proxy.momentum": _FIXED.format(0.9, "asvp.proxy.ProxyRecipe, paper appendix A"),
    "proxy.nesterov": _FIXED.format("on", "asvp.proxy.ProxyRecipe, the official code"),
    "proxy.inference_batch_size": _FIXED.format(16384, "asvp.proxy_scoring.INFERENCE_BATCH_SIZE"),
    "strategy_options.activeft": "ActiveFT runs with the official ASVP code's settings (asvp.strategies.activeft)",
    "finetune.momentum": _FIXED.format(0.9, "asvp.recipes.SGD_MOMENTUM, paper appendix A"),
    "finetune.nesterov": _FIXED.format("on", "asvp.recipes.SGD_NESTEROV, the official code"),
    "finetune.recalibrate_bn": _FIXED.format("on", "asvp.recipes.RECALIBRATE_BN"),
    "lpft.ft_epochs": "LP-FT's FT stage runs finetune.epochs - lpft.lp_epochs epochs; set finetune.epochs",
    "lpft.lr_backbone": _FT_STAGE.format("lr_backbone"),
    "lpft.lr_head": _FT_STAGE.format("lr_head"),
    "lpft.weight_decay": _FT_STAGE.format("weight_decay"),
    "lpft.milestones": _FT_STAGE.format("milestones") + ", counted in epochs of the whole schedule",
    "lpft.warmup_steps": _FT_STAGE.format("warmup_steps"),
    "lpft.ft_min_steps": _FT_STAGE.format("min_steps") + ", its share by epochs",
    "lpft.lp_min_steps": "the probe takes its share of finetune.min_steps by epochs",
    "evaluation.batch_size": _FIXED.format(512, "asvp.training.PREDICT_BATCH_SIZE, paper appendix A"),
    "decision.feature_alignment": "the ablation is a method: add asvp_training_only to `methods`",
    "decision.training_alignment": "the ablation is a method: add asvp_features_only to `methods`",
    "decision.ped": "PED runs with the PED repository's settings (asvp.ped.STEP, NSIGMA, EXIT_RATIO, MAX_STEPS, "
                    "CONVERGED_STEPS, REFERENCE_ROWS)",
}


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    """Turn a jsonschema error into one sentence naming the key and the fix."""
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        known = set(allowed)
        unknown = sorted(k for k in error.instance if k not in known)
        prefix = f"{where}." if error.absolute_path else ""
        removed = [f"{prefix}{k}" for k in unknown if f"{prefix}{k}" in REMOVED_KEYS]
        if removed:
            return (
                f"{source}: config key '{removed[0]}' was removed: {REMOVED_KEYS[removed[0]]}. "
                "Remove the key from the config."
            )
        keys = ", ".join(f"'{prefix}{k}'" for k in unknown)
        return (
            f"{source}: unknown config key {keys}. Allowed keys here: {', '.join(allowed)}. "
            "Fix the spelling or remove the key."
        )
    if error.validator == "enum":
        return (
            f"{source}: key '{where}' is {error.instance!r}, which is not one of "
            f"{error.validator_value}. Use one of those values."
        )
    if error.validator == "type":
        hint = ""
        if isinstance(error.instance, str):
            try:
                float(error.instance)
                hint = " (YAML reads exponents without a sign as text: write 1.0e+6 or 1000000.0)"
            except ValueError:
                pass
        return (
            f"{source}: key '{where}' must be of type {error.validator_value}, "
            f"got {error.instance!r}{hint}. Change the value in the config."
        )
    if error.validator == "required":
        return f"{source}: {error.message} at '{where}'. Add it to the config."
    return f"{source}: key '{where}': {error.message}. Change the value in the config."


def validate_config(
    config: Mapping[str, Any], *, source: str = "workflow config", schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """Return a validated deep copy of `config` with schema defaults filled in.

    Raises ConfigError naming the first offending key (errors are sorted so the message is stable).
    """
    filled = copy.deepcopy(dict(config))
    validator = _DefaultFillingValidator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(filled), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise ConfigError(_describe(errors[0], source))
    _check_consistency(filled, source)
    return filled


# Methods that train a model with LP-FT (ASVP until its rule first triggers, decision.py).
LPFT_METHODS = frozenset({"standard_lpft", "asvp", "asvp_training_only"})


def _check_consistency(config: dict[str, Any], source: str) -> None:
    """Cross-key checks a JSON schema cannot express."""
    data = config["data"]
    if data["dataset"] in ("imagefolder", "imagenet", "cifar10", "cifar100", "oxford_pets") and not data["root"]:
        raise ConfigError(
            f"{source}: data.dataset is '{data['dataset']}', which needs data.root (the folder that "
            "holds the dataset). Set data.root to that folder."
        )
    budgets = config["schedule"]["budgets"]
    _check_own_images(config, source)
    if data["pool_subset"] is not None and sum(budgets) > data["pool_subset"]:
        raise ConfigError(
            f"{source}: schedule.budgets sum to {sum(budgets)} labels but data.pool_subset is only "
            f"{data['pool_subset']} images. Lower the budgets or enlarge the pool."
        )
    try:
        evaluation_rounds(budgets, config["evaluation"]["at"])
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_random_beyond(config, source)
    candidates = config["strategy_options"]["badge"]["candidates"]
    if "badge" in config["strategies"] and candidates is not None and len(budgets) > 1 and candidates < max(budgets[1:]):
        raise ConfigError(
            f"{source}: strategy_options.badge.candidates is {candidates}, fewer than the largest round budget "
            f"({max(budgets[1:])}): BADGE could not fill that round. Raise it or set it to null (exact BADGE)."
        )
    finetune, lp_epochs = config["finetune"], config["lpft"]["lp_epochs"]
    epochs = finetune["epochs"]
    # The step schedule is stepped after each epoch, so milestone m lowers the lr from epoch
    # m + 1 on: a milestone equal to the epoch count is as dead as one beyond it.
    late = [m for m in finetune["milestones"] if m >= epochs]
    if late and finetune["optimizer"] != "adamw":  # AdamW's cosine has no milestones
        raise ConfigError(
            f"{source}: finetune.milestones {late} lie at or beyond its {epochs} epochs and would "
            "never take effect (milestone m lowers the lr from epoch m + 1). Remove them or raise the epochs."
        )
    # LP-FT is the FT schedule whose first lp_epochs epochs train the head alone (the probe).
    if not LPFT_METHODS & set(config["methods"]):
        return
    if lp_epochs >= epochs:
        raise ConfigError(
            f"{source}: lpft.lp_epochs is {lp_epochs}, not below finetune.epochs ({epochs}): LP-FT's FT stage "
            "runs finetune.epochs - lpft.lp_epochs epochs. Lower lpft.lp_epochs or raise finetune.epochs."
        )
    early = [m for m in finetune["milestones"] if m < lp_epochs]
    if early and finetune["optimizer"] != "adamw":
        raise ConfigError(
            f"{source}: finetune.milestones {early} fall inside LP-FT's {lp_epochs} probe epochs "
            f"(lpft.lp_epochs), where no lr steps. Move them to epoch {lp_epochs} or later, or lower lpft.lp_epochs."
        )


# Keys only data.dataset unlabelled (your own images) reads: set with another dataset, they are a mistake.
OWN_IMAGE_KEYS = ("glob", "images", "classes", "test")


def _check_random_beyond(config: dict[str, Any], source: str) -> None:
    """evaluation.random_beyond as a list: increasing label counts past the last round's, within
    the pool, labelled by the simulated oracle (people would label the baseline's extra rounds)."""
    points, budgets = config["evaluation"]["random_beyond"], config["schedule"]["budgets"]
    if points == "auto" or not points:
        return
    last, pool = sum(budgets), config["data"]["pool_subset"]
    if config["oracle"] != "simulated":
        raise ConfigError(f"{source}: evaluation.random_beyond {points} asks people (oracle: {config['oracle']}) to label "
                          "extra rounds of the random baseline. Set evaluation.random_beyond: [] (or 'auto').")
    reached = [last, *points]
    if any(b <= a for a, b in zip(reached, reached[1:])):
        raise ConfigError(f"{source}: evaluation.random_beyond {points} must increase and start past the last round's "
                          f"{last} labels (the sum of schedule.budgets), e.g. [{last + budgets[-1]}, {last + 2 * budgets[-1]}].")
    if pool is not None and points[-1] > pool:
        raise ConfigError(f"{source}: evaluation.random_beyond reaches {points[-1]} labels but data.pool_subset is only "
                          f"{pool} images. Lower the points or enlarge the pool.")


def _check_own_images(config: dict[str, Any], source: str) -> None:
    """Your own images (data.dataset unlabelled), data.initial_labels and schedule.cold_start:
    every check that needs no pool, so that a run stops before its first job."""
    from asvp.data.unlabelled import UNLABELLED, count_initial_labels, read_classes

    data, schedule = config["data"], config["schedule"]
    defaults = load_schema()["properties"]["data"]["properties"]
    if data["dataset"] != UNLABELLED:
        changed = [key for key in OWN_IMAGE_KEYS if data[key] != defaults[key]["default"]]
        if changed:
            raise ConfigError(f"{source}: data.{changed[0]} applies to data.dataset unlabelled (your own images) only, "
                              f"but data.dataset is '{data['dataset']}'. Remove data.{changed[0]} or set data.dataset: "
                              "unlabelled.")
    else:
        if config["oracle"] == "simulated":
            raise ConfigError(f"{source}: data.dataset unlabelled has no labels, so the simulated oracle cannot answer. "
                              "Set oracle: human (people label each round's picks).")
        if not data["root"] and not data["images"]:
            raise ConfigError(f"{source}: data.dataset unlabelled needs data.root (the folder of your images) or "
                              "data.images (a file listing them). Set one.")
        if data["pool_subset"] is not None:
            raise ConfigError(f"{source}: data.pool_subset does not apply to your own images (the pool is every image "
                              "found, and it may grow). Remove data.pool_subset, or narrow data.glob.")
        try:
            read_classes(data["classes"])
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    if data["initial_labels"] is not None:
        if schedule["cold_start"] != "random":
            raise ConfigError(f"{source}: data.initial_labels are round 0's labels, so schedule.cold_start "
                              f"'{schedule['cold_start']}' has nothing to pick. Remove one of the two.")
        count = count_initial_labels(data["initial_labels"])
        if count != schedule["budgets"][0]:
            raise ConfigError(f"{source}: data.initial_labels lists {count} images, which are round 0's labels, but "
                              f"schedule.budgets[0] is {schedule['budgets'][0]}. Set schedule.budgets[0] to {count}.")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, not yet validated."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist. Pass an existing file with --configfile.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values.")
    return raw


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it (defaults filled in)."""
    return validate_config(read_config_file(path), source=str(path))


def layered_config(command_line: dict[str, Any], files: list[str], files_given: bool,
                   overrides_given: bool) -> tuple[dict[str, Any], list[str]]:
    """The validated config of a Snakemake run and its layers, lowest first (after the schema's
    defaults): workflow_config.yaml when no --configfile is given (Snakemake has then loaded
    nothing, `command_line` holds only --config), else each --configfile in order (already merged
    into `command_line` by Snakemake); --config KEY=VALUE on top. Nothing depends on the working
    directory."""
    from snakemake.utils import update_config

    layers = list(files)
    merged = dict(command_line)
    if not files_given:
        merged = read_config_file(files[0])
        update_config(merged, dict(command_line))
    if overrides_given:
        layers.append("--config")
    validated = validate_config(merged, source=" < ".join(layers))
    print(f"asvp-flow: config = schema defaults < {' < '.join(layers)}", file=sys.stderr)
    return validated, layers


def validated_json(configfile: str) -> str:
    """Validate a config file; the config with every default filled in, as JSON."""
    import json

    return json.dumps(load_config(configfile), indent=2)


def write_effective_config(config: Mapping[str, Any], layers: str, out: str | Path) -> None:
    """The config a run used, every default filled in, as YAML a user can pass back with
    --configfile to repeat it; the header says which files it was merged from."""
    from asvp.atomic import write_text

    header = f"# The effective config of this experiment (validated, defaults filled in).\n# Layers, lowest first: {layers}\n"
    write_text(out, header + yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None))
