#!/usr/bin/env bash
# The GPU checks in one script that fits 8 minutes of device time: trm_jax against the official
# PyTorch code (with torch.compile, as the official trainers run it), same weights and batches,
# TFLOP/s and MFU, plus a jax.profiler trace of 3 more trm_jax steps. Usage (work trees of the
# official repositories; nothing is downloaded):
#
#   benchmarks/gpu_compare.sh OFFICIAL_DIS_TREE OFFICIAL_TRM_TREE OUTDIR [CHECK ...]
#
# Default CHECKs: dis_arc_medium (train step, matmul=auto, i.e. XLA's dot with an fp32 output:
# its backward dots are fp32 x bf16, BUILD_NOTES "GPU" and benchmarks/step_anatomy.py) and
# dis_arc_medium_native (the same with matmul=xla_native: bf16 dots throughout), at most
# 170 s each. Opt-in CHECKs, not in the 8 minutes: attention (the fused-attention numerics,
# benchmarks/attention_check.py), dis_arc_medium_eval, dis_nqueens, trm_sudoku_mlp_t.
# OUTDIR gets <check>.json/.log and profile_<check>.tgz (the trace: TensorBoard's profile
# plugin reads its *.xplane.pb, ui.perfetto.dev its perfetto_trace.json.gz), no deeper than
# OUTDIR/file and at most 8 files for the default checks.
set -uo pipefail
dis=$1 trm=$2 out=$3
shift 3
checks=${*:-dis_arc_medium dis_arc_medium_native}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
profiles=$(mktemp -d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)" \
  | tee -a "$out/gpu.txt"
pack_profile() {  # name: the check's trace as one file (a kept file is at most 16 MiB)
  local name=$1
  [ -d "$profiles/$name" ] || return 0
  tar -czf "$out/profile_$name.tgz" -C "$profiles/$name" --exclude='*.trace.json.gz' .
  if [ "$(stat -c %s "$out/profile_$name.tgz")" -gt $((15 * 2**20)) ]; then
    tar -czf "$out/profile_$name.tgz" -C "$profiles/$name" --exclude='*.json.gz' .
  fi
  ls -l "$out/profile_$name.tgz"
}
compare() {  # name limit_s args...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($*)"
  timeout "$limit" python3 "$here/compare_official.py" "$@" --torch_compile --repeats 10 \
    --warmup 3 --profile_dir "$profiles/$name" --json_out "$out/$name.json" 2>&1 \
    | grep -v "^running " | tee "$out/$name.log"
  pack_profile "$name"
}
arc=(--official "$dis" --config arc_dis_medium --batch_sizes 512)
for check in $checks; do
  case $check in
    attention) echo "=== attention"; timeout 90 python3 "$here/attention_check.py" \
                 --config arc_dis_medium --batch_size 32 2>&1 | tee "$out/attention.log" ;;
    dis_arc_medium) compare dis_arc_medium 170 "${arc[@]}" --what train ;;
    dis_arc_medium_native) compare dis_arc_medium_native 170 "${arc[@]}" --what train \
                             --matmul xla_native ;;
    dis_arc_medium_eval) compare dis_arc_medium_eval 170 "${arc[@]}" --what eval ;;
    dis_nqueens) compare dis_nqueens 150 --official "$dis" --config nqueens_dis --batch_sizes 512 ;;
    trm_sudoku_mlp_t) compare trm_sudoku_mlp_t 200 --official "$trm" --config sudoku_mlp_t \
                        --batch_sizes 512 ;;
    *) echo "unknown check $check"; exit 2 ;;
  esac
done
rm -rf "$profiles"
