"""Many plates: one Dask task per plate (``dask.distributed``), with progress and retries.

By default a ``LocalCluster`` of ``n_workers`` processes (one thread each) runs on this machine;
``scheduler`` may instead name any running scheduler (``tcp://host:8786``) whose workers see the
same file system. Each task runs ``run.extract_plate``, which writes ``{plate}.parquet`` and resumes
an interrupted plate, so a stopped run started again only computes what is missing. A plate that
fails is retried ``retries`` times; plates that still fail are listed in one error at the end, after
every other plate has been written.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from ..errors import CpDistillerError
from ..progress import ProgressCallback, no_progress
from .features import FeatureSettings
from .images import Manifest
from .mesmer import MesmerC5Reduced
from .run import WeightsSpec, extract_plate, load_model, sites_per_well

log = logging.getLogger("cpdistiller.extractor")


@functools.lru_cache(maxsize=2)
def _cached_model(spec: WeightsSpec) -> MesmerC5Reduced:
    """One network per worker process and weights (tasks of the same run share it)."""
    return load_model(spec)


def _plate_task(manifest: Manifest, out_dir: str, weights: WeightsSpec, settings: FeatureSettings,
                n_sites: int, device: str, workers: int, checkpoint_every: int,
                torch_threads: int | None) -> dict:
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    return extract_plate(manifest, out_dir, weights, settings, n_sites=n_sites, device=device, workers=workers,
                         checkpoint_every=checkpoint_every, model=_cached_model(weights))


def extract_plates(manifest: Manifest, out_dir: str | Path, weights: WeightsSpec,
                   settings: FeatureSettings | None = None, n_sites: int | None = None, device: str = "auto",
                   workers: int = 4, checkpoint_every: int = 16, use_dask: bool = True,
                   scheduler: str | None = None, n_workers: int = 2, retries: int = 2,
                   torch_threads: int | None = None, progress: ProgressCallback = no_progress) -> list[dict]:
    """Extract every plate of ``manifest`` into ``out_dir`` (one Parquet file each).

    Returns one summary dict per plate (see ``run.extract_plate``), in manifest plate order.
    Raises CpDistillerError naming the plates that failed after ``retries`` retries.
    """
    weights.check()  # refuse before starting any worker
    settings = settings or FeatureSettings()
    n_sites = sites_per_well(manifest, n_sites)
    plates = manifest.plates()
    out = str(Path(out_dir))
    Path(out).mkdir(parents=True, exist_ok=True)
    args = (out, weights, settings, n_sites, device, workers, checkpoint_every, torch_threads)
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    if not use_dask:
        for k, plate in enumerate(plates):
            progress(k / len(plates), f"plate {plate}")
            results[plate] = _plate_task(manifest.for_plate(plate), *args)
        progress(1.0, "done")
        return [results[p] for p in plates]

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise CpDistillerError(f"cannot reach the Dask scheduler at {scheduler!r} ({exc}).") from exc
    else:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        futures = {
            client.submit(_plate_task, manifest.for_plate(p), *args, retries=retries, pure=False,
                          key=f"extract-plate-{p}-{k}"): p
            for k, p in enumerate(plates)
        }
        progress(0.0, f"{len(plates)} plates on {len(client.scheduler_info()['workers'])} workers")
        for n_done, fut in enumerate(as_completed(futures), start=1):
            plate = futures[fut]
            if fut.status == "error":
                exc = fut.exception()
                failures[plate] = f"{type(exc).__name__}: {exc}"
                log.warning("plate %s failed after %d retries: %s", plate, retries, exc)
            else:
                results[plate] = fut.result()
            progress(n_done / len(plates), f"plate {plate} {'failed' if plate in failures else 'done'}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if failures:
        shown = "; ".join(f"{p}: {m}" for p, m in list(failures.items())[:5])
        raise CpDistillerError(f"{len(failures)} of {len(plates)} plates failed after {retries} retries "
                               f"({shown}). The other plates are in {out}; run again to retry.")
    return [results[p] for p in plates]
