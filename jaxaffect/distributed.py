"""Multi-host initialisation, only when asked for.

`--distributed=auto` (default) initialises when the environment says this is one process of
many: SLURM (SLURM_NTASKS > 1), a TPU pod (TPU worker hostnames), Open MPI, or the explicit
variables JAXAFFECT_COORDINATOR / JAXAFFECT_NUM_PROCESSES / JAXAFFECT_PROCESS_ID that
`launch/local.sh` sets. `yes` always initialises (JAX auto-detects the cluster), `no` never does.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def _env_int(name: str) -> int | None:
  v = os.environ.get(name)
  return int(v) if v not in (None, "") else None


def maybe_initialize(mode: str = "auto", coordinator: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> bool:
  coordinator = coordinator or os.environ.get("JAXAFFECT_COORDINATOR")
  num_processes = num_processes or _env_int("JAXAFFECT_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAXAFFECT_PROCESS_ID")
  explicit = coordinator is not None and num_processes is not None and process_id is not None
  if mode == "no":
    return False
  if mode == "auto" and not explicit:
    on_slurm = (_env_int("SLURM_NTASKS") or 1) > 1
    on_tpu_pod = len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    on_mpi = (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1
    if not (on_slurm or on_tpu_pod or on_mpi):
      return False
  if explicit:
    log.info("jax.distributed: process %d of %d, coordinator %s", process_id, num_processes,
                 coordinator)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=120)
  else:
    jax.distributed.initialize()
  return True
