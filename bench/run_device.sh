#!/usr/bin/env bash
# What we run on the lent GPU machine (device tool), in one call: unpack the carried wheels and
# FlashAttention-4 (see ../shared/gpu/README.md), the correctness checks, then the benchmark.
# Usage there: bash bench/run_device.sh [opscheck] [steps720] [template] [profile720] [checks] [bench480] [bench720]
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TVM_FFI_DISABLE_TORCH_C_DLPACK=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if ls .fa4/*.tar.xz >/dev/null 2>&1; then
  mkdir -p /tmp/fa4site && for f in .fa4/*.tar.xz; do tar -xJf "$f" -C /tmp/fa4site; done
  export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
fi
NG=$(python3 -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
nvidia-smi topo -m >> "$OUT/gpus.txt" 2>&1
python3 -c "from wan_core.models.attention import resolve_backend as r; print('attention backend:', r('auto','cuda').name)" 2>&1 | tail -1 | tee -a "$OUT/gpus.txt"
for what in "$@"; do
  case "$what" in
    opscheck) timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu/test_dit_gpu.py -k "block_ops or cuda_matches_cpu" -s 2>&1 | grep -E "rel_err|passed|failed|Error" | tail -20 ;;
    steps720) timeout 250 python3 bench/step_profile.py --res 720p --ops reference,compile --steps 1 --profile \
                --profile-best-only --vae --formats 640:1 --out "$OUT/step_profile.json" 2>&1 | grep -v Warning | tail -30 ;;
    template) timeout 170 python3 -m wan_core bench --preset template --compile --work_dir /tmp/bench --videos 1 \
                --out "$OUT/bench_template.json" 2>&1 | grep -v Warning | tail -40 ;;
    fp8check) timeout 50 python3 bench/fp8_check.py --out "$OUT/fp8_check.json" 2>&1 | grep -v Warning | tail -12 ;;
    profile720) python3 bench/step_profile.py --res 720p --ops reference,fast,compile --profile --profile-best-only --vae \
                  --extra 640:1 --out "$OUT/step_profile.json" 2>&1 | grep -v Warning | tail -25 ;;
    checks) python3 bench/gpu_checks.py --gpus "$NG" --out "$OUT/gpu_checks.json" 2>&1 | grep -v Warning | tail -40 ;;
    bench480|bench720)
      res=${what#bench}p
      python3 bench/bench_dit.py --res "$res" --modes single --steps 2 --out "$OUT/bench.jsonl" 2>&1 | tail -3
      if [ "$NG" -ge 2 ]; then
        python3 -m torch.distributed.run --nproc_per_node 2 bench/bench_dit.py --res "$res" \
          --modes fsdp_ulysses,cfg,ulysses --steps 2 --out "$OUT/bench.jsonl" 2>&1 | grep -v Warning | tail -5
      fi ;;
  esac
done
