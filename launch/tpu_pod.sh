#!/usr/bin/env bash
# Run one trm_jax experiment on every host of a Cloud TPU pod slice (multi-controller JAX).
#
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/arc.py:arc1 /mnt/shared/runs/arc1 [--config.x=y ...]
#
# Every worker gets the same command; jax.distributed.initialize() (called by trm_jax.main)
# discovers the slice, process 0 builds the dataset and writes logs. The repository must be
# checked out at the same path on every worker (first run: launch/tpu_pod.sh ... with SETUP=1
# installs it). Data files must be readable from every worker (a bucket or a shared disk):
# pass --config.data.manual_dir and --config.data.data_dir. The workdir (checkpoints, logs)
# must also be one filesystem for all workers, e.g. a gcsfuse mount of a bucket.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo_dir=${REPO_DIR:-trm_jax}
setup=""
if [ "${SETUP:-0}" = 1 ]; then
  setup="(test -d ${repo_dir} || git clone ${REPO_URL:?set REPO_URL for SETUP=1} ${repo_dir}) && \
pip install -q -e ${repo_dir} 'jax[tpu]' && "
fi
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "${setup}cd ${repo_dir} && python3 -m trm_jax.main --config ${config} --workdir ${workdir} $*"
