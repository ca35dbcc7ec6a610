"""Every method the workflow compares, in one table: how it selects, whether it decides to
refresh its features, how its final model is trained.

The rules, the DAG, the cost model, the report and the config schema's enum all read this
table, so adding a method is one entry here (plus its tests). Paper sec. 6: random, standard AL
(FT and LP-FT), SVPp, ASVP and its Table 3 ablations, ActiveFT(pre).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

# How a round's queries are chosen after round 0:
#   random       uniform draw (no model);
#   proxy        an MLP proxy trained on the labelled samples' pre-computed features;
#   model        the fine-tuned network itself (standard AL: a fine-tune every round);
#   single_shot  no rounds: each evaluation point is its own selection of that many labels
#                on the pre-trained features, without labels (ActiveFT(pre)).
Selection = Literal["random", "proxy", "model", "single_shot"]
# How the final model is trained: FT, LP-FT, or as the round's refresh decision says
# (LP-FT until the rule first triggers, FT from then on: the paper's training alignment).
FinalRecipe = Literal["ft", "lpft", "decided"]


@dataclass(frozen=True)
class Method:
    name: str
    selection: Selection
    final_recipe: FinalRecipe
    # None: makes no refresh decision. Otherwise the decision settings it overrides (the
    # paper's Table 3 ablations switch one alignment off).
    decision_switches: Mapping[str, bool] | None = None
    table3_variant: str | None = None  # its row label in the paper's Table 3, if any
    summary: str = ""
    fixed_strategy: str | None = None  # selects with this strategy only, whatever `strategies` says

    @property
    def decides(self) -> bool:
        """Runs PED + LogME after every round; its features follow the decisions."""
        return self.decision_switches is not None

    @property
    def reads_features(self) -> bool:
        """Selects on pre-computed backbone features (so it pays the pre-trained extraction)."""
        return self.selection in ("proxy", "single_shot")

    @property
    def finetunes_every_round(self) -> bool:
        """Its next round selects with this round's fine-tuned model (standard AL)."""
        return self.selection == "model"

    @property
    def single_shot(self) -> bool:
        return self.selection == "single_shot"


def _switches(**switches: bool) -> Mapping[str, bool]:
    return MappingProxyType(dict(switches))


_TABLE = (
    Method("random", "random", "ft", summary="uniform random labels, final FT", fixed_strategy="random"),
    Method("standard", "model", "ft", summary="fine-tune every round, select with that network, final FT"),
    Method("standard_lpft", "model", "lpft", summary="as standard, with LP-FT"),
    Method("svpp", "proxy", "ft", summary="MLP proxy on frozen pre-trained features, final FT"),
    Method("asvp", "proxy", "decided", _switches(feature_alignment=True, training_alignment=True), table3_variant="both (ASVP)",
           summary="proxy whose features PED + LogME refresh; final LP-FT until the refresh, FT after"),
    Method("asvp_features_only", "proxy", "decided", _switches(feature_alignment=True, training_alignment=False),
           table3_variant="feature alignment only (refresh, final FT)",
           summary="ASVP ablation: refreshes the features, always final FT"),
    Method("asvp_training_only", "proxy", "decided", _switches(feature_alignment=False, training_alignment=True),
           table3_variant="training alignment only (pre-trained features, LP-FT -> FT)",
           summary="ASVP ablation: keeps the pre-trained features, final LP-FT -> FT"),
    Method("activeft_pre", "single_shot", "ft", summary="ActiveFT on the pre-trained features, one shot per point, FT",
           fixed_strategy="activeft"),
)
METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in _TABLE})


def method(name: str) -> Method:
    """The table's entry for `name`, or an error listing the methods there are."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None


def names(predicate=lambda m: True) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """Names of the methods for which `predicate(method)` holds, in table order."""
    return tuple(m.name for m in _TABLE if predicate(m))


def strategies_of(name: str, configured: list[str]) -> list[str]:
    """The strategies a method runs: its own fixed one, or every configured strategy."""
    fixed = method(name).fixed_strategy
    return [fixed] if fixed else list(configured)


def decision_settings(name: str, decision_config: dict[str, object]) -> dict[str, object]:
    """The decision section as `name` runs it: the config's, with the method's switches applied."""
    switches = method(name).decision_switches
    if switches is None:
        raise ValueError(f"method {name!r} makes no refresh decisions; deciding methods: {', '.join(names(_decides))}")
    return {**decision_config, **switches}


def training_recipe(name: str) -> str:
    """The fine-tune recipe the method's evaluation passes on: ft, lpft, or auto (read the decision)."""
    recipe = method(name).final_recipe
    return "auto" if recipe == "decided" else recipe


def _decides(m: Method) -> bool:
    return m.decides

