"""The concurrent scheduler of a download run.

One :class:`~concurrent.futures.ThreadPoolExecutor` is shared by all classes.
:class:`Scheduler` keeps it full -- earlier classes first, never queueing work
beyond ``workers`` -- and records every outcome (manifest row, class report,
progress event, log line) in the calling thread.

Determinism: for one class, the accepted plus in-flight URLs never exceed the
quota (:meth:`ClassState.can_start`), and URLs are started in list order, so
every started URL that turns out good can be accepted -- the accepted set is
exactly the first ``quota`` good URLs of the list, whatever the timing.

Interruption (e.g. KeyboardInterrupt raised by the progress callback): the
stop flag ends the workers' retry waits, running requests finish and are
recorded, then the exception propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass

from .download_manifest import ACCEPTED, REJECTED, ClassQueue, EntryLike, ManifestWriter, Outcome
from .download_report import AcceptedImage, ProgressEvent

__all__ = ["ClassState", "Scheduler"]

logger = logging.getLogger("advpipe.data.download")

Work = Callable[[EntryLike], Outcome]
Progress = Callable[[ProgressEvent], None]


@dataclass
class ClassState(ClassQueue):
    """A class during the run: its queue, report and URLs in flight."""

    in_flight: int = 0

    def can_start(self) -> bool:
        # accepted + in_flight <= quota keeps the accepted set deterministic:
        # every started URL that turns out good can be accepted.
        return bool(self.queue) and self.report.accepted + self.in_flight < self.report.quota


class Scheduler:
    """Runs ``work`` on the queued entries of ``states`` with ``workers`` threads."""

    def __init__(self, states: Mapping[int, ClassState], manifest: ManifestWriter,
                 workers: int, progress: Progress | None = None, log_every: int = 0) -> None:
        self.states = states
        self.manifest = manifest
        self.workers = workers
        self.progress = progress
        self.log_every = log_every
        self.done = 0
        self.total_accepted = sum(s.report.accepted for s in states.values())
        self.total_quota = sum(s.report.quota for s in states.values())
        self._in_flight: dict[Future[Outcome], int] = {}

    def run(self, work: Work, on_interrupt: Callable[[], None]) -> None:
        """Process every startable entry; ``on_interrupt`` is called first on an exception."""
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="download") as pool:
            try:
                while self._fill(pool, work):
                    finished, _ = wait(self._in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        del self._in_flight[future]
                        self._finish(future.result())
            except BaseException:
                on_interrupt()
                for future in list(self._in_flight):
                    with suppress(Exception):
                        self.record(future.result())
                self._in_flight.clear()
                raise

    def _fill(self, pool: ThreadPoolExecutor, work: Work) -> bool:
        """Start entries, earlier classes first; False when nothing is left in flight."""
        for state in self.states.values():
            while len(self._in_flight) < self.workers and state.can_start():
                entry = state.queue.popleft()
                state.in_flight += 1
                self._in_flight[pool.submit(work, entry)] = entry.class_index
            if len(self._in_flight) >= self.workers:
                break
        return bool(self._in_flight)

    def record(self, outcome: Outcome) -> ClassState:
        """Write ``outcome`` to the manifest and count it in its class report."""
        state = self.states[outcome.entry.class_index]
        state.in_flight -= 1
        self.manifest.write(outcome)
        report = state.report
        report.requested += 1
        if outcome.status == ACCEPTED:
            report.accepted += 1
            self.total_accepted += 1
            entry = outcome.entry
            report.files.append(AcceptedImage(entry.class_index, entry.wnid, entry.url,
                                              entry.line_no, outcome.file, outcome.width,
                                              outcome.height))
            assert report.accepted <= report.quota, "quota invariant violated"
        else:
            report.reasons[outcome.reason] += 1
            if outcome.status == REJECTED:
                report.rejected += 1
            else:
                report.errors += 1
        return state

    def _finish(self, outcome: Outcome) -> None:
        """Record an outcome of the normal flow, then report progress."""
        r = self.record(outcome).report
        self.done += 1
        if self.progress is not None:
            self.progress(ProgressEvent(
                r.class_index, r.wnid, outcome.entry.url, outcome.status, outcome.reason,
                r.accepted, r.quota, r.requested, r.rejected, r.errors,
                self.done, self.total_accepted, self.total_quota))
        if self.log_every and self.done % self.log_every == 0:
            logger.info(
                "%d URLs done; class %d (%s): %d/%d accepted, %d requested, %d rejected, "
                "%d errors; total %d/%d",
                self.done, r.class_index, r.wnid, r.accepted, r.quota, r.requested,
                r.rejected, r.errors, self.total_accepted, self.total_quota)
