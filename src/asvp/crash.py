"""Crash points: where the kill-and-resume tests pull the plug on a whole run.

A real crash (node failure, OOM killer, `kill -9` of the head job) stops the Snakemake process
and every job at once, anywhere. Tests reproduce that deterministically: with
ASVP_CRASH_AT=<point>[:<n>] in the environment, the n-th time (default 1) one process passes
`crash_point(<point>)` it sends SIGKILL to its whole process group, which, for a Snakemake run
started in its own session, is the head process and all of its jobs. Unset (always, outside
tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_passed: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get("ASVP_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _passed[name] += 1
    if _passed[name] >= int(nth or 1):
        os.killpg(os.getpgid(0), signal.SIGKILL)
