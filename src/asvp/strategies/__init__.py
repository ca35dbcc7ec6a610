"""Selection strategies, registered by name; the config picks them."""

from asvp.strategies import activeft, badge, coreset, random_sampling, uncertainty  # noqa: F401  (registration side effect)
from asvp.strategies.base import STRATEGIES, PoolState, Strategy, configured_strategy, get_strategy, register

__all__ = ["STRATEGIES", "PoolState", "Strategy", "configured_strategy", "get_strategy", "register"]
