#!/usr/bin/env bash
# The GPU check (issue 11), in one run on a machine with a CUDA GPU, without Ray or MLflow:
#   1. installs the small wheels the machine lacks (pydantic and its parts, datasets and its missing parts) from
#      $WHL (default ../../.whl, as a device run carries them; skipped when the folder has none);
#   2. runs the `gpu` tests (tests/test_gpu.py) and the device-rule tests (tests/test_device.py);
#   3. bench/sparse_step.py and bench/select.py on CUDA with a randomly initialised model of xlm-roberta-base's shape
#      (12 layers, hidden 768, vocabulary 250,002) at K = 14,155,776: dense and sparse step times in fp32 and bf16,
#      optimizer-state bytes, selection time and peak GPU memory over all 278M entries;
#   4. bench/ddp_check.py: two processes on the GPU, synchronised through the loop's gradient-sync hook.
#   5. (run right after 2.; STEPS=trial-sequence reruns it alone) bench/trial_sequence.py: every method's sweep
#      trial as the Ray worker runs it (train_sft with the worker's hooks, minus Ray) at xlm-roberta-base's shape:
#      θ1 computed and saved, θ1 and DeFT-X's SVD cache reused (a rank sweep), a sparse phase resumed from a
#      mid-phase checkpoint (bitwise the uninterrupted delta), every tensor checked on the GPU.
# Everything goes to $OUT/log (and the JSON lines to $OUT/results.jsonl); a failing step does not stop the others,
# the exit status is the number of failed steps.
#     OUT=/tmp/out bash bench/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/raysft-gpu-check}
WHL=${WHL:-../../.whl}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAYSFT_CACHE=${RAYSFT_CACHE:-/tmp/raysft-cache}
PY=${PY:-python3}
failed=0

STEPS=${STEPS:-all}  # or a space-separated list of the step names below, to rerun some of them

step() {  # step NAME TIMEOUT_S COMMAND...: run, time and report one step
  local name=$1 limit=$2
  shift 2
  [ "$name" = wheels ] || case " $STEPS " in *" all "*|*" $name "*) ;; *) return 0 ;; esac
  echo "=== $name ($(date -u +%H:%M:%S)) $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}

if compgen -G "$WHL/*.whl" >/dev/null; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
  export PYTHONPATH="$PWD:/tmp/site"
else
  echo "no wheels under $WHL: using the packages installed here"
  export PYTHONPATH="$PWD"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("transformers", "safetensors", "pydantic", "datasets", "pyarrow", "typer", "rich"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
EOF

step gpu-tests 240 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu.py
step device-tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_device.py
# What a sweep trial runs, without Ray (raysft.distributed.train_workers' helpers): the trial sequence of every
# method (computing, reusing θ1 and the selection cache, resumed from a checkpoint), tensors kept on the GPU.
step trial-sequence 180 "$PY" bench/trial_sequence.py --device "${DEVICE:-cuda}" --shape "${SHAPE:-xlmr-base}"
# DEVICE, SHAPE, K and BATCH override the GPU defaults (e.g. DEVICE=cpu SHAPE=tiny K=6941 BATCH=8 to try the script's
# path on a CPU machine, where the gpu tests skip).
DEVICE=${DEVICE:-cuda}
BENCH=(--device "$DEVICE" --model "random:${SHAPE:-xlmr-base}" --k "${K:-14155776}" --batch-size "${BATCH:-32}" --seq-len 128)
step sparse-step 180 "$PY" bench/sparse_step.py "${BENCH[@]}" --steps 6 --precision both
step select 180 "$PY" bench/select.py "${BENCH[@]}" --dense-steps 2 --check-cpu
step ddp-fp32 120 "$PY" bench/ddp_check.py --device "$DEVICE" --world 2 --model random:tiny --steps 4
step ddp-bf16 120 "$PY" bench/ddp_check.py --device "$DEVICE" --world 2 --model random:tiny --steps 4 --precision bf16
# At xlm-roberta-base's shape: the dense phase all-reduces all N entries, the sparse phase K + head.
step ddp-xlmr 240 "$PY" bench/ddp_check.py --device "$DEVICE" --world 2 --model "random:${SHAPE:-xlmr-base}" \
  --k "${K:-14155776}" --steps 2 --batch-size 8 --seq-len 128

grep -h '^{"bench"' "$OUT/log" > "$OUT/results.jsonl" || true
echo "=== done: $failed failed step(s); $(wc -l < "$OUT/results.jsonl") result line(s) in $OUT/results.jsonl"
exit "$failed"
