#!/usr/bin/env bash
# Runs N processes of `python -m jaxaffect.main` on this machine, joined by jax.distributed on
# 127.0.0.1 (CPU collectives: gloo). For testing multi-host code paths on one machine.
#
#   launch/local.sh N [jaxaffect.main args...]
#
# Environment: CPU_DEVICES_PER_PROCESS (default 1) emulated CPU devices per process;
# PYTHON (default python); JAXAFFECT_PORT (default: a free port). Exits non-zero if any
# process fails; the others are then stopped.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: launch/local.sh N [jaxaffect.main args...]" >&2
  exit 2
fi
N=$1; shift
PY=${PYTHON:-python}
PORT=${JAXAFFECT_PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
DEV=${CPU_DEVICES_PER_PROCESS:-1}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEV} ${XLA_FLAGS:-}" \
  JAXAFFECT_COORDINATOR="127.0.0.1:${PORT}" JAXAFFECT_NUM_PROCESSES="$N" JAXAFFECT_PROCESS_ID="$i" \
    $PY -m jaxaffect.main "$@" > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  if ! wait "$p"; then status=1; cleanup; fi
done
exit $status
