#!/usr/bin/env bash
# TPU VM pod slice: run the same command on every worker; jax.distributed auto-detects the pod.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/vaanet_ve8.py --workdir gs://bucket/runs/x
#
# Assumes the repository is checked out (and installed with `pip install -e .`) at the same
# path on every worker, e.g. through a startup script or `gcloud ... scp`.
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: launch/tpu_pod.sh TPU_NAME ZONE [main args...]" >&2; exit 2; fi
NAME=$1; ZONE=$2; shift 2
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all \
  --command "cd \$HOME/jaxaffect && python -m jaxaffect.main --distributed=yes${ARGS}"
