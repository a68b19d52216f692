#!/bin/bash
# Multi-host training on a Cloud TPU VM slice: runs the same command on every worker.
#   launch/tpu_vm.sh TPU_NAME ZONE configs/gen1_stage4.py gs://bucket/runs/gen1 [--config.train.lr=1e-5 ...]
# Assumes vidjax is installed on the workers (pip install -e ".[tpu]"), the shards are readable from
# every worker, and the workdir is shared (a GCS bucket: Orbax writes there). jax.distributed detects
# the TPU slice by itself; the mesh spans all chips.
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
printf -v overrides '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/vidjax && vidjax train --config $config --workdir $workdir $overrides"
