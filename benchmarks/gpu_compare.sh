#!/usr/bin/env bash
# The GPU checks of issue 14 in one script: the fused-attention numerics (attention_check.py),
# then trm_jax against the official PyTorch code (with torch.compile, as the official trainers
# run it), same weights and batches, train step and eval batch, TFLOP/s and MFU. Usage (work
# trees of the official repositories; nothing is downloaded):
#
#   benchmarks/gpu_compare.sh OFFICIAL_DIS_TREE OFFICIAL_TRM_TREE OUTDIR [CHECK ...]
#
# CHECKs (default all): attention dis_arc_medium dis_arc_medium_native dis_nqueens
# trm_sudoku_mlp_t. Each has its own time limit so that one slow compile cannot eat the others.
# dis_arc_medium_native is dis_arc_medium with matmul=xla_native (bf16 dot outputs, the lead
# for the GPU training step; BUILD_NOTES, "GPU").
set -uo pipefail
dis=$1 trm=$2 out=$3
shift 3
checks=${*:-attention dis_arc_medium dis_arc_medium_native dis_nqueens trm_sudoku_mlp_t}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)" \
  | tee -a "$out/gpu.txt"
compare() {  # name limit_s args...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($*)"
  timeout "$limit" python3 "$here/compare_official.py" "$@" --torch_compile --repeats 10 \
    --warmup 3 --json_out "$out/$name.json" 2>&1 | grep -v "^running " | tee "$out/$name.log"
}
for check in $checks; do
  case $check in
    attention) echo "=== attention"; timeout 90 python3 "$here/attention_check.py" \
                 --config arc_dis_medium --batch_size 32 2>&1 | tee "$out/attention.log" ;;
    dis_arc_medium) compare dis_arc_medium 170 --official "$dis" --config arc_dis_medium --batch_sizes 512 ;;
    dis_arc_medium_native) compare dis_arc_medium_native 170 --official "$dis" --config arc_dis_medium \
                             --batch_sizes 512 --jax_model_overrides matmul=xla_native ;;
    dis_nqueens) compare dis_nqueens 100 --official "$dis" --config nqueens_dis --batch_sizes 512 ;;
    trm_sudoku_mlp_t) compare trm_sudoku_mlp_t 140 --official "$trm" --config sudoku_mlp_t --batch_sizes 512 ;;
    *) echo "unknown check $check"; exit 2 ;;
  esac
done
