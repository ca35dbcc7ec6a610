"""A full disk: one message naming the file and the fix, and nothing under a final name."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from asvp import atomic, cli
from asvp.pool import split_table, write_selected


def test_disk_full_while_writing_names_the_file_and_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pool = split_table(np.arange(10), [f"train/{i:06d}" for i in range(10)], np.arange(10) % 3)
    pool.to_csv(tmp_path / "pool.csv", index=False)
    write_selected(tmp_path / "selected.csv", pool, np.array([4, 1]), np.array([0.5, 0.2]))
    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if str(dst).endswith("labelled.csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    out = tmp_path / "round000" / "labelled.csv"
    code = cli.main(["label", "--selected", str(tmp_path / "selected.csv"), "--pool", str(tmp_path / "pool.csv"),
                     "--round", "0", "--out", str(out)])
    message = capsys.readouterr().err
    assert code == 2
    assert "asvp label: error: the disk is full while writing" in message and "Free space there" in message
    assert not out.exists() and list(out.parent.iterdir()) == []  # neither the result nor its temporary file


def test_a_full_disk_reported_only_in_the_message_is_recognised(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """h5py and torch.save say "No space left on device" in a RuntimeError/OSError without errno."""

    def failing(args: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
                           "file write failed (No space left on device)")

    monkeypatch.setattr(cli, "run_command", failing)
    assert cli.main(["label", "--selected", "s", "--pool", "p", "--round", "0", "--out", "o"]) == 2
    assert "the disk is full" in capsys.readouterr().err
