"""The heavy maps over images (data_prep's check, train's features, predict's scores) on a Dask cluster.

One setting, ``runtime.dask.address``, says where they run: ``null`` in this process (nothing here
is used), ``local`` on a ``LocalCluster`` of this machine's cores, ``tcp://host:8786`` or a
scheduler file on an existing cluster. The image list is cut into partitions of
``partition_size`` paths; each is one task, retried on another worker when its worker dies, and
its few numbers per image come back to the driver as soon as it finishes, so the driver never
holds images or a model's intermediate tensors.

What a task needs besides its paths (a model, limits) is sent to every worker once
(:meth:`DaskMap.shared`), and a worker builds its model once per run (:func:`worker_cached`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from image_classification.errors import ParameterError

logger = logging.getLogger(__name__)

SETTING = "runtime.dask.address"


@dataclass(frozen=True)
class DaskSettings:
    """Where the maps over images run (``runtime.dask`` in ``conf/base/parameters.yml``).

    Attributes:
        address: ``None`` (in this process), ``local`` (a LocalCluster), ``tcp://host:port``
            or the path of a scheduler file (``dask scheduler --scheduler-file``).
        workers: worker processes of a ``local`` cluster; ``None``: one per core.
        threads_per_worker: threads of each local worker, and of the model inside every task.
        partition_size: images per task.
        retries: how often a failed task is tried again before the run stops.
        connect_timeout_s: how long to wait for a scheduler before saying it is unreachable.
        dashboard_address: where a local cluster serves its dashboard (needs bokeh); ``None``: none.
    """

    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    partition_size: int = 500
    retries: int = 3
    connect_timeout_s: float = 10.0
    dashboard_address: str | None = ":8787"

    def __post_init__(self) -> None:
        if self.address is not None and not str(self.address).strip():
            raise ParameterError(f"{SETTING} is empty; use null (in-process), local, tcp://host:8786 "
                                 "or the path of a scheduler file")
        if self.workers is not None and int(self.workers) < 1:
            raise ParameterError(f"runtime.dask.workers must be at least 1 or null, got {self.workers}")
        if int(self.threads_per_worker) < 1 or int(self.partition_size) < 1 or int(self.retries) < 0:
            raise ParameterError("runtime.dask.threads_per_worker and partition_size must be at least 1 and "
                                 f"retries at least 0, got {self.threads_per_worker}, {self.partition_size} "
                                 f"and {self.retries}")
        if not float(self.connect_timeout_s) > 0:
            raise ParameterError(f"runtime.dask.connect_timeout_s must be positive, got {self.connect_timeout_s}")

    @classmethod
    def from_params(cls, params: DaskSettings | dict | None) -> DaskSettings:
        """From the ``runtime.dask`` block (a dict, already this class, or missing: in-process)."""
        if isinstance(params, cls):
            return params
        return cls(**(params or {}))

    @property
    def enabled(self) -> bool:
        return self.address is not None


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _local_cluster(settings: DaskSettings):
    from distributed import LocalCluster

    workers = settings.workers or os.cpu_count() or 1
    dashboard = settings.dashboard_address
    if dashboard is not None and not _has_bokeh():
        logger.info("The Dask dashboard needs bokeh (pip install bokeh); running without it")
        dashboard = None
    return LocalCluster(n_workers=workers, threads_per_worker=settings.threads_per_worker, processes=True,
                        dashboard_address=dashboard)


def _connect(settings: DaskSettings):
    from distributed import Client

    address, timeout = str(settings.address), f"{float(settings.connect_timeout_s)}s"
    try:
        if "://" not in address and (address.endswith(".json") or os.path.isfile(address)):
            if not os.path.isfile(address):
                raise OSError(f"the scheduler file {address} does not exist")
            return Client(scheduler_file=address, timeout=timeout)
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        raise ParameterError(f"cannot reach the Dask scheduler at {address} ({SETTING}): {error}. Start the "
                             "scheduler, fix the address, or set it to local or null") from None


@contextmanager
def dask_client(settings: DaskSettings) -> Iterator[Any]:
    """A connected ``distributed.Client`` (closed, with any local cluster, on exit), or ``None`` in-process."""
    if not settings.enabled:
        yield None
        return
    if settings.address == "local":
        # a cluster that lives for one node: its start and stop, logged at INFO, are noise in a run's log
        logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("distributed").level))
        cluster = _local_cluster(settings)
        try:
            from distributed import Client

            from image_classification.dask_shutdown import QuietShutdown

            with Client(cluster) as client:
                client.register_plugin(QuietShutdown(), name=QuietShutdown.name)
                yield client
        finally:
            cluster.close()
        return
    client = _connect(settings)
    try:
        yield client
    finally:
        client.close()


def _describe(client, settings: DaskSettings) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(worker.get("nthreads", 1) for worker in workers.values())
    # an existing cluster serves its own dashboard; a local one only with bokeh
    served = settings.address != "local" or (settings.dashboard_address is not None and _has_bokeh())
    return f"{len(workers)} workers, {threads} threads" + (f"; dashboard {client.dashboard_link}" if served else "")


class DaskMap:
    """Partitions of a list mapped on a cluster, each result handed back once, in any order."""

    def __init__(self, client, settings: DaskSettings, what: str) -> None:
        self.client, self.settings, self.what = client, settings, what
        self._shared: list = []

    def shared(self, value: Any) -> Any:
        """``value`` sent once to every worker; pass the result to :meth:`run` in place of the value."""
        # in a list: a dict or list given as such would be scattered as many values, not one
        future = self.client.scatter([value], broadcast=True, hash=False)[0]
        self._shared.append(future)
        return future

    def run(self, task: Callable[..., Any], items: Sequence, *args: Any) -> Iterator[tuple[int, Any]]:
        """Yield ``(start, task(items[start:start+size], *args))`` as partitions finish.

        Every partition yields exactly once: a task whose worker died is run again on another
        (Dask's ``allowed-failures``), one that raised is tried ``retries`` more times, and one that
        still fails stops the run with its error.
        """
        from distributed import as_completed

        size, starts = int(self.settings.partition_size), range(0, len(items), int(self.settings.partition_size))
        if not len(starts):
            return
        run_id = uuid.uuid4().hex[:8]
        logger.info("%s: %d images in %d partitions on Dask (%s)", self.what, len(items), len(starts),
                    _describe(self.client, self.settings))
        futures = {
            self.client.submit(task, list(items[start:start + size]), *args, key=f"{self.what}-{run_id}-{start}",
                               retries=int(self.settings.retries), pure=False): start
            for start in starts
        }
        with tqdm(total=len(items), desc=self.what, unit="img", leave=False) as progress:
            for future in as_completed(list(futures)):
                start = futures.pop(future)
                result = future.result()
                future.release()
                progress.update(min(size, len(items) - start))
                yield start, result
        if futures:  # as_completed hands every future back once; anything else is a bug
            raise RuntimeError(f"{self.what}: {len(futures)} of {len(starts)} partitions did not come back")

    def in_order(self, task: Callable[..., Any], items: Sequence, *args: Any) -> list:
        """The results of :meth:`run`, one per partition, in the items' order."""
        results = dict(self.run(task, items, *args))
        return [results[start] for start in sorted(results)]

    def close(self) -> None:
        for future in self._shared:
            future.release()
        self._shared.clear()


@contextmanager
def dask_map(settings: DaskSettings, what: str) -> Iterator[DaskMap]:
    """A :class:`DaskMap` on the cluster ``runtime.dask.address`` names (callers take the in-process
    path themselves when it is null)."""
    with dask_client(settings) as client:
        mapper = DaskMap(client, settings, what)
        try:
            yield mapper
        finally:
            mapper.close()


_WORKER_CACHE: dict[str, Any] = {}
_WORKER_CACHE_LOCK = threading.Lock()


def worker_cached(key: str, build: Callable[[], Any]) -> Any:
    """What ``build()`` returns, built once per worker process and key (the latest key only is kept;
    a worker of several threads builds it once too)."""
    with _WORKER_CACHE_LOCK:
        if key not in _WORKER_CACHE:
            _WORKER_CACHE.clear()
            _WORKER_CACHE[key] = build()
        return _WORKER_CACHE[key]
