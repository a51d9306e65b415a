"""A local Dask cluster that closes without a false alarm in the run's log.

Closing a local cluster closes each worker; a heartbeat already in flight then meets the worker's
own closing connections (``ConnectionPool closing``) and distributed logs "Failed to communicate
with scheduler during heartbeat" with a traceback (dask/distributed#7192), although the run has
finished and nothing was lost. :class:`QuietShutdown` drops that one message from a worker that is
closing; from a worker still running (its scheduler really gone) it is kept.

Its own module: :mod:`image_classification.distributed` imports ``distributed`` only when a cluster
is used, and a worker plugin must be a class a worker can import.
"""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin

HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"
CLOSING = frozenset({"closing", "closing_gracefully", "closed"})


class HeartbeatAtShutdown(logging.Filter):
    """Drops :data:`HEARTBEAT_FAILED` while ``worker`` is closing; keeps every other record."""

    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(HEARTBEAT_FAILED):
            return True
        status = getattr(self.worker, "status", None)
        return getattr(status, "name", "running") not in CLOSING


class QuietShutdown(WorkerPlugin):
    """Installs :class:`HeartbeatAtShutdown` on each worker of a local cluster.

    No teardown: a worker removes its plugins before it closes its connections, which is when the
    heartbeat fails."""

    name = "image-classification-quiet-shutdown"
    idempotent = True

    def setup(self, worker) -> None:
        logging.getLogger("distributed.worker").addFilter(HeartbeatAtShutdown(worker))
