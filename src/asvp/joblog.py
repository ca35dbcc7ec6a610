"""A job's log that survives its own reruns: `asvp --log <log> <command>`.

Snakemake empties a rule's `log:` file before every attempt, so what a killed or failed attempt
printed would be lost on the rerun. The step therefore writes everything it prints (Python's and
C libraries' output alike: file descriptors 1 and 2 are redirected) straight into
`<log>.attempts`, which Snakemake leaves alone, under a header per attempt; the writes are
unbuffered lines, so a SIGKILL loses nothing already printed. When the step ends (success or an
error) this attempt's part is copied to `<log>`, the file Snakemake shows. Doing this in the
step itself keeps the rules' shell commands free of pipes and helper scripts.

A job that runs several steps (a round's selection job: train the proxy, select, label, decide)
has one log: its first step replaces `<log>`, the later ones (`asvp --same-job`) append to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def logged(log: str | Path, append: bool = False) -> Iterator[None]:
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    attempts = open(f"{log}.attempts", "ab", buffering=0)
    attempts.write(f"=== attempt started {dt.datetime.now().astimezone().isoformat(timespec='seconds')} on "
                   f"{socket.gethostname()} (pid {os.getpid()}) ===\n".encode())
    start = attempts.tell()
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(attempts.fileno(), 1), os.dup2(attempts.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        yield
    except BaseException as error:
        if not isinstance(error, SystemExit):
            traceback.print_exc()  # into the log: Snakemake shows the log of a failed job
        raise
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
        attempts.close()
        with open(f"{log}.attempts", "rb") as handle:
            handle.seek(start)
            part = handle.read()
        with open(log, "ab" if append else "wb") as out:
            out.write(part)
