"""One run per workdir: an exclusive lock held by process 0 for the whole run.

The lock is `flock` on `<workdir>/run.lock`, so the kernel drops it when its holder dies
(kill -9, a crash, power loss on the holder's host): a later run takes it over without any
timeout guessing, and names the holder it replaced. The file records who holds it (host, pid,
start time) for the one-line error a second run prints. Multi-host runs agree through
process 0's outcome.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxaffect.errors import UserError, WorkdirInUse, os_error_line

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


def _describe(info: dict) -> str:
  started = info.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return (f"host {info.get('host', '?')} pid {info.get('pid', '?')} started {when} "
          f"({info.get('command', '?')})")


def _read(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    return json.loads(data.decode("utf-8")) if data.strip() else {}
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """`with WorkdirLock(workdir, mode): ...` holds the lock (process 0) for the block."""

  def __init__(self, workdir: str, mode: str = "train"):
    self.workdir, self.mode = workdir, mode
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def _acquire_local(self) -> None:
    try:
      os.makedirs(self.workdir, exist_ok=True)
      while True:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          holder = _read(fd)
          os.close(fd)
          raise WorkdirInUse(f"workdir {self.workdir} is in use by {_describe(holder)}; wait "
                             f"for it to finish or use another --workdir") from None
        except OSError as e:
          os.close(fd)
          if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            log.warning("%s: the filesystem offers no locks (%s); running unlocked", self.path,
                        e.strerror)
            return
          raise
        # The file may have been removed by its previous holder between open and flock.
        try:
          same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
          same = False
        if same:
          break
        os.close(fd)
      stale = _read(fd)
      if stale:
        log.warning("workdir %s: taking over the lock left by %s, which is no longer running",
                    self.workdir, _describe(stale))
      info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "command": self.mode}
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(info).encode())
      os.fsync(fd)
      self._fd = fd
    except OSError as e:
      raise UserError(os_error_line(e, "lock the workdir at")) from None

  def __enter__(self) -> "WorkdirLock":
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire_local()
      except UserError as e:
        error = e
    if jax.process_count() > 1:
      ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not int(ok) and error is None:
        error = WorkdirInUse(f"workdir {self.workdir}: process 0 could not take the run lock "
                             "(see its error)")
    if error is not None:
      raise error
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # a clean exit leaves no holder to report
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __exit__(self, *exc) -> bool:
    self.release()
    return False
