"""A lost rank is named: heartbeats through the rendezvous store, one line naming the rank that stopped, and an exit.

A rank that dies or freezes mid-step leaves the others blocked in a collective. What happens next depends on where
it was: on its own node the launcher's agent ends the job within a second (its "Root Cause" block names the rank);
a dead peer on another node breaks gloo's sockets (a traceback that names an address, not a rank); a frozen peer
or a vanished node sends nothing, and the others wait out the collective timeout (torch: 30 min on gloo, 10 on
NCCL). `PeerWatch` makes every case end the same way: every rank beats a counter in the store the process group
already uses, from a daemon thread (collectives release the GIL, so a rank blocked in one keeps beating; a dead or
frozen one stops); rank 0 watches every counter, the others watch rank 0's and a `lost` verdict. A counter still
for `patience` seconds is a lost rank: the watcher prints

    error: rank 1 of 2 lost (pid 4242 on node7): no heartbeat for 30 s (--peer_timeout_s 30); rank 0 exits ...

and leaves with `LOST_RANK_EXIT` without waiting for its blocked main thread (a checkpoint being written stays a
hidden partial folder: the last complete one is intact). When a collective fails first (a dead peer's socket),
the uncaught error's traceback is followed by the same line, after a short look at which counters stopped.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

LOST_RANK_EXIT = 70  # EX_SOFTWARE; the launcher itself exits 1 and names this exit code in its failure block


class PeerWatch:
    """Heartbeats of this rank and a watch on the others' (rank 0: every rank; others: rank 0), in a daemon thread.

    Args:
        store: A `torch.distributed.Store` every rank reaches (a client of its own: the thread never waits on
            the main thread's store operations).
        rank: This process's global rank.
        world: The number of ranks.
        patience: Seconds without a heartbeat after which a rank is lost.
        interval: Seconds between heartbeats (and checks).
    """

    def __init__(self, store, rank: int, world: int, patience: float, interval: float = 1.0):
        self.store, self.rank, self.world = store, rank, world
        self.patience, self.interval = patience, min(interval, patience / 5)
        self.watched = [r for r in range(world) if r != rank] if rank == 0 else [0]
        now = time.monotonic()
        self.seen = {r: (-1, now) for r in self.watched}  # last counter value, when it last changed
        self.stopped = threading.Event()
        self.quiet = False  # diagnosing a failed collective: keep beating, the excepthook prints the verdict
        self.store.set(f"who/{rank}", f"pid {os.getpid()} on {socket.gethostname()}")
        self.thread = threading.Thread(target=self._loop, name="peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        """Start beating and watching; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (a run that ends normally: the others stop beating as they finish)."""
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                verdict = self.check()
            except Exception as error:
                if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
                    return  # the store lived in rank 0's process, which may just have finished: stop watching
                # The launcher's agent on rank 0's node holds the store: that node is gone.
                verdict = (
                    f"the rendezvous store is unreachable ({type(error).__name__}: {error}): rank 0's node is lost"
                )
                verdict = verdict.replace("\n", " ")
            if verdict and not self.quiet and not self.stopped.is_set():
                self.exit(verdict)

    def check(self) -> str | None:
        """One beat and one look: the verdict line when a watched rank is lost (or rank 0 named one), else None."""
        self.store.add(f"beat/{self.rank}", 1)
        if self.rank != 0 and self.store.check(["lost"]):
            return self.store.get("lost").decode()
        now = time.monotonic()
        for r in list(self.watched):
            value = self.store.add(f"beat/{r}", 0)  # reads without blocking (get waits for a missing key)
            if value != self.seen[r][0]:
                self.seen[r] = (value, now)
            elif now - self.seen[r][1] > self.patience:
                ended = self.ended(r)
                if ended == "finished":  # it left normally (its last work done before ours): nothing to watch
                    self.watched.remove(r)
                    continue
                return self.lost(
                    r, ended or f"no heartbeat for {now - self.seen[r][1]:.0f} s (--peer_timeout_s {self.patience:g})"
                )
        return None

    def ended(self, rank: int) -> str | None:
        """How a rank's process ended, as it recorded it ("finished" or "failed: ..."); None if it did not say
        (killed, frozen, its node gone)."""
        key = f"exit/{rank}"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def record_exit(self, how: str) -> None:
        """Leave how this process ends in the store ("finished", or "failed: the error"), once."""
        if not self.stopped.is_set():
            self.stopped.set()
            try:
                self.store.set(f"exit/{self.rank}", how)
            except Exception:
                pass  # the store is gone with rank 0's node: nobody is left to tell

    def lost(self, rank: int, why: str) -> str:
        """The line naming a lost rank; rank 0 also leaves it in the store for every other rank to print."""
        who = self.store.get(f"who/{rank}").decode() if self.store.check([f"who/{rank}"]) else "never started"
        line = (
            f"rank {rank} of {self.world} lost ({who}): {why}; rank {self.rank} exits; the last complete checkpoint "
            "is intact, rerun the same command to resume"
        )
        if self.rank == 0:
            self.store.set("lost", line)
        return line

    def exit(self, line: str) -> None:
        """Print the line and leave now: the main thread may be blocked in a collective that never returns."""
        sys.stdout.flush()
        print(f"error: {line}", file=sys.stderr, flush=True)
        os._exit(LOST_RANK_EXIT)

    def diagnose(self, look: float | None = None) -> str | None:
        """After a failed collective: watch the counters for `look` seconds (3 beats) and name a rank that stopped
        or said it failed; None if every watched rank is still beating."""
        look = 3 * self.interval + 0.5 if look is None else look
        start = {r: self.store.add(f"beat/{r}", 0) for r in self.watched}
        deadline = time.monotonic() + look
        while time.monotonic() < deadline:
            if self.rank != 0 and self.store.check(["lost"]):
                return self.store.get("lost").decode()
            time.sleep(self.interval / 2)
        for r in self.watched:
            if self.store.add(f"beat/{r}", 0) == start[r]:
                return self.lost(r, self.ended(r) or "its heartbeat stopped when a collective failed")
        return None


def _client_store(timeout: float):
    """A store client of its own on the default process group's store (the rendezvous' TCPStore), prefixed."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    store = _get_default_store()
    while isinstance(store, dist.PrefixStore):  # the default group's "default_pg/N" prefix
        store = store.underlying_store
    if isinstance(store, dist.TCPStore):
        # Its own socket: the main thread's store calls (a `get` waits for its key) never stall the heartbeat.
        store = dist.TCPStore(store.host, store.port, is_master=False, timeout=timedelta(seconds=timeout))
    # An elastic restart reuses the agent's store: each attempt beats under its own keys.
    return dist.PrefixStore(f"peer-watch/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def start_peer_watch(patience: float, print_line=print) -> PeerWatch | None:
    """Heartbeats and the watch for this multi-process run (None with one process or `patience` 0), and the line
    naming a lost rank after an uncaught collective error.

    Args:
        patience: Seconds without a heartbeat after which a rank is lost (--peer_timeout_s; 0: off).
        print_line: How the start is reported (the main process's print).
    """
    import torch.distributed as dist

    if patience <= 0 or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    watch = PeerWatch(_client_store(max(patience, 10.0)), dist.get_rank(), dist.get_world_size(), patience).start()
    previous = sys.excepthook

    def name_the_lost_rank(kind, error, trace) -> None:
        # A dead peer's socket fails the collective at once, with a traceback naming an address: the line that
        # names the rank comes after it, at the end of this rank's output.
        previous(kind, error, trace)
        if not isinstance(error, Exception) or watch.stopped.is_set():
            return
        watch.quiet = True  # this rank keeps beating: another rank diagnosing must not take it for lost
        # The launcher's agent SIGTERMs the survivors within a second of seeing a worker die (and SIGKILLs them
        # 30 s later); the look takes a few seconds, and this process is ending anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            line = watch.diagnose()
        except Exception:
            line = None
        if line:
            print(f"error: {line}", file=sys.stderr, flush=True)
        # The others then name this rank with its own error, not as silent.
        watch.record_exit(f"failed ({kind.__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})")

    sys.excepthook = name_the_lost_rank
    atexit.register(watch.record_exit, "finished")  # runs after the excepthook: a failure is recorded first
    print_line(f"[peers] {dist.get_world_size()} ranks beat every {watch.interval:g} s; lost after {patience:g} s")
    return watch
