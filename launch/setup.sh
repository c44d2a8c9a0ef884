#!/usr/bin/env bash
# Installs trm_jax on a machine a launcher provisions; SkyPilot tasks written by
# `python -m trm_jax.launch --backend skypilot` run it as their `setup`, in the copy of this
# checkout that SkyPilot puts on every host (TPU pod slices: on every worker).
#
#   bash launch/setup.sh tpu|cuda
set -euo pipefail
case "${1:-}" in
  tpu) jax='jax[tpu]' ;;
  cuda) jax='jax[cuda12]' ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet -e ".[gcs]" "$jax"  # gcsfs: gs:// workdirs
