"""Locks: which process is computing a store entry right now.

Two runs on one store (two book builds, a build and ``rmpm train``, the jobs of an
array) must not compute the same entry twice. A task claims an entry before it
computes it: an exclusive lock on ``<store>/locks/<kind>/<k[:2]>/<name>.lock``, taken
with filelock's ``FileLock`` (``flock(2)`` on POSIX), held until the entry is
committed. The operating system drops a lock when its holder dies, however it dies
(SIGKILL, the OOM killer), so a crashed run's claims expire by themselves and a run
waiting for them computes the entries. ``locks/`` is no kind of entry: the store's
listings and ``verify`` never look at it, and a lock file is empty (the lock is on
the open file, not its content), so a run leaves it in place for the next claimant
rather than deleting it under a waiter's feet. ``rmpm store sweep`` removes the old
ones nobody holds (:func:`sweep`).

How a task uses claims (:func:`work_through`) so that no two tasks ever wait on each
other: it tries every entry's claim *without waiting*, computes the ones it got and
hands the others back ("deferred"); only a task that has nothing else to do waits,
polling while it holds no claim, and whoever holds a claim is computing, never
waiting. A waiting task that finds the entry committed is done; one that gets the
claim (its holder died) computes the entry itself.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

LOCKS = "locks"
#: seconds between two looks of a task waiting for another process's claims
POLL_S = 0.5
#: a claim held longer than this is taken for a hung holder: the waiting task then
#: computes the entry without the claim (the store's atomic commit keeps one copy)
WAIT_S = 6 * 3600.0

T = TypeVar("T")


def lock_path(root: str | Path, kind: str, name: str) -> Path:
    """Where the claim on entry ``name`` of ``kind`` (models, evals, ...) lives."""
    return Path(root) / LOCKS / kind / name[:2] / f"{name}.lock"


class Lock:
    """An exclusive lock on one lock file, the claim on one entry (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # thread_local=False: the claim belongs to the task, whichever thread releases it
        self._lock = FileLock(str(self.path), thread_local=False)

    def try_acquire(self) -> bool:
        """Take the claim if nobody holds it; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked


def work_through(items: Sequence[T], name_of: Callable[[T], str], root: str | Path, kind: str,
                 done: Callable[[T], bool], compute: Callable[[list[T]], None],
                 wait: bool = False, poll: float = POLL_S,
                 timeout: float = WAIT_S) -> tuple[list[T], list[T]]:
    """Compute (``compute(batch)``) every item of ``items`` that is not ``done`` yet,
    each under its claim; returns (the items computed here, the items deferred).

    Without ``wait`` the items another process has claimed are deferred, for a later
    call with ``wait``; with it, this call polls every ``poll`` seconds, holding no
    claim, until each item is done (by whoever holds its claim) or its claim is free,
    and computes the latter. After ``timeout`` seconds it computes what is still
    claimed elsewhere, with a warning. Errors creating a claim (a read-only or full
    store) propagate as the store's own write errors.
    """
    from .store import is_write_error, write_error
    computed: list[T] = []
    deadline = time.monotonic() + timeout
    while True:
        todo = [x for x in items if not done(x)]
        if not todo:
            return computed, []
        claims: dict[str, Lock] = {}
        try:
            for x in todo:
                c = Lock(lock_path(root, kind, name_of(x)))
                try:
                    got = c.try_acquire()
                except OSError as e:
                    if is_write_error(e, c.path.parent):
                        raise write_error(e, c.path.parent) from e
                    raise
                if got:
                    claims[name_of(x)] = c
            # the previous holder may have committed it just before letting go
            mine = [x for x in todo if name_of(x) in claims and not done(x)]
            if mine:
                compute(mine)
                computed += mine
        finally:
            for c in claims.values():
                c.release()
        rest = [x for x in todo if name_of(x) not in claims]
        if not rest:
            return computed, []
        if not wait:
            return computed, rest
        if time.monotonic() > deadline:
            rest = [x for x in rest if not done(x)]
            if rest:
                one = len(rest) == 1
                warnings.warn(f"{len(rest)} entr{'y' if one else 'ies'} of {kind} claimed by "
                              f"another process for over {timeout:.0f} s; computing "
                              f"{'it' if one else 'them'} here too", RuntimeWarning, stacklevel=2)
                compute(rest)
                computed += rest
            return computed, []
        if not mine:
            time.sleep(poll)


def sweep(root: str | Path, older_than_s: float = 3600.0) -> int:
    """Delete the lock files under ``root/locks`` that are older than ``older_than_s``
    and that nobody holds; returns how many went.

    Each is deleted while this process holds its claim, so no holder loses one. A
    process that opened the file just before and waits on it could then hold a claim
    on the deleted file while another takes a new one: at worst an entry is computed
    twice, and the store's atomic commit keeps one copy (the age limit makes even that
    unlikely: a lock file is created when its entry is first claimed). Folders stay:
    removing one could fail another process's ``mkdir`` + ``open`` in between.
    """
    n, now = 0, time.time()
    for f in sorted((Path(root) / LOCKS).glob("*/*/*.lock")):
        try:
            if now - f.stat().st_mtime <= older_than_s:
                continue
        except FileNotFoundError:  # another sweep took it
            continue
        claim = Lock(f)
        try:
            if not claim.try_acquire():  # held: in use
                continue
        except OSError:  # a store that cannot be written: nothing can be swept
            continue
        try:
            f.unlink(missing_ok=True)
            n += 1
        finally:
            claim.release()
    return n
