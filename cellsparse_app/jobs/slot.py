"""One training at a time per process: a first-come, first-served slot with queue positions.

Every training in a ``cellsparse serve`` process -- REST jobs (:class:`~cellsparse_app.jobs.runner.
JobRunner`) and the web app's rounds (:func:`cellsparse_app.session.rounds.train_round`) -- takes a
:class:`Ticket` from the same :class:`TrainingSlot` (:func:`process_slot`) and trains only once
the ticket is granted, so two trainings never contend for the GPU and each can tell its user
how many trainings are ahead::

    ticket = process_slot().enter("web app round")
    while not ticket.wait(0.25):
        show(f"{ticket.ahead()} ahead")      # or leave: ticket.release()
    try:
        train(...)
    finally:
        ticket.release()

No web framework here: the front ends show the positions.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time

__all__ = ["Ticket", "TrainingSlot", "process_slot"]

logger = logging.getLogger(__name__)


class Ticket:
    """A place in a :class:`TrainingSlot`'s queue; granted when it may train.

    Attributes:
        holder: who waits (for logs and diagnostics), e.g. ``"REST job 1a2b"``.
    """

    def __init__(self, slot: "TrainingSlot", holder: str, number: int) -> None:
        self.holder = holder
        self._slot = slot
        self._number = number
        self.granted = False
        self.released = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until granted or ``timeout`` seconds pass; True once granted."""
        return self._slot._wait(self, timeout)

    def ahead(self) -> int:
        """Trainings before this one: those training now plus those waiting ahead (0 once
        granted or released)."""
        return self._slot._ahead(self, count_running=True)

    def waiting_ahead(self) -> int:
        """Trainings waiting ahead of this one, those training now not counted (0: next)."""
        return self._slot._ahead(self, count_running=False)

    def release(self) -> None:
        """Leave the queue, or free the slot when granted; safe to call twice."""
        self._slot._release(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "granted" if self.granted else "waiting"
        return f"Ticket({self.holder!r}, {state})"


class TrainingSlot:
    """``capacity`` trainings at a time, the others waiting first come, first served.

    Args:
        capacity: trainings allowed at the same time (1: one GPU, one training).
    """

    def __init__(self, capacity: int = 1) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: list[Ticket] = []
        self._numbers = itertools.count()

    def enter(self, holder: str) -> Ticket:
        """Join the queue (granted at once when the slot is free); returns the ticket."""
        with self._cond:
            ticket = Ticket(self, holder, next(self._numbers))
            self._waiting.append(ticket)
            self._grant()
            if not ticket.granted:
                logger.info("%s waits for a training slot: %d ahead", holder,
                            self._ahead(ticket, count_running=True))
            return ticket

    def status(self) -> dict[str, list[str]]:
        """``{"running": [holders], "waiting": [holders in order]}``."""
        with self._cond:
            return {"running": [t.holder for t in self._running],
                    "waiting": [t.holder for t in self._waiting]}

    # -- used by Ticket ---------------------------------------------------------------------
    def _grant(self) -> None:
        while self._waiting and len(self._running) < self.capacity:
            ticket = self._waiting.popleft()
            ticket.granted = True
            self._running.append(ticket)
            logger.debug("training slot granted to %s", ticket.holder)
        self._cond.notify_all()

    def _wait(self, ticket: Ticket, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not ticket.granted and not ticket.released:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            return ticket.granted and not ticket.released

    def _ahead(self, ticket: Ticket, *, count_running: bool) -> int:
        with self._cond:
            if ticket.granted or ticket.released:
                return 0
            before = sum(1 for t in self._waiting if t._number < ticket._number)
            return before + (len(self._running) if count_running else 0)

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.released:
                return
            ticket.released = True
            if ticket in self._running:
                self._running.remove(ticket)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
                logger.info("%s left the training queue before it started", ticket.holder)
            self._grant()


_PROCESS_SLOT: TrainingSlot | None = None
_PROCESS_LOCK = threading.Lock()


def process_slot() -> TrainingSlot:
    """The slot shared by every training of this process (created on first use).

    Process-wide on purpose, unlike other server state: the GPU and the CPU cores are the
    process's, whichever front end (REST API, mounted web app) asks for a training.
    """
    global _PROCESS_SLOT
    with _PROCESS_LOCK:
        if _PROCESS_SLOT is None:
            _PROCESS_SLOT = TrainingSlot()
        return _PROCESS_SLOT
