#!/usr/bin/env bash
# Everything that needs a lent GPU, in one call (a lease is short: prepare, run once, read the results).
#
#   bash benchmarks/gpu_session.sh OUTDIR [SECONDS_SCALE]
#
# Runs from the repository root without installing rnnkit (PYTHONPATH=src), each part in its own
# process under `timeout`, so that one hang or failure costs only its own part. Writes into OUTDIR:
#   env.txt            GPU, driver, torch / CUDA / cuDNN / Triton versions
#   variants.json/.log benchmarks/gpu_variants.py: the cells beyond torch.nn, checked then timed (issue 14)
#   determinism.*      benchmarks/gpu.py --parts determinism: bit-identical runs (issue 15)
#   gpu.json/.log      benchmarks/gpu.py: check, LSTM/GRU layers and packed against cuDNN (issues 3, 15)
#   lm-*/              short char-LM runs on the GPU: --amp bf16, --amp fp16, and torchrun with nccl
#   cpu-quick.json/.log benchmarks/cpu.py --quick on the machine's own CPU (an Intel Xeon on the H200s
#                      lent so far): another x86 machine for the CPU engine's per-machine table (issue 13)
# and OUTDIR.tgz holding all of it.
set -u
out=${1:?usage: gpu_session.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: run, log, and say how it ended
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    echo "=== $name: rc $rc after $((SECONDS - t0)) s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'triton', triton.__version__, torch.cuda.get_device_name())"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

part variants 170 $py benchmarks/gpu_variants.py --out "$out/variants.json"
part determinism 70 $py benchmarks/gpu.py --parts determinism --out "$out/determinism.json"
lm=(-m rnnkit.cli train lm --corpus stdlib --max-chars 1000000 --cell lstm --hidden 256 --embed 64
    --batch-size 64 --bptt 64 --lr 2e-3 --epochs 1 --max-steps 120 --eval-every 40 --device cuda --no-progress)
part lm-bf16 40 $py "${lm[@]}" --amp bf16 --out "$out/lm-bf16"
part lm-fp16 40 $py "${lm[@]}" --amp fp16 --out "$out/lm-fp16"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -ge 2 ]; then  # NCCL refuses two ranks on one device ("Duplicate GPU detected", seen on an H200)
    part lm-nccl 60 $py -m torch.distributed.run --standalone --nproc_per_node "$gpus" "${lm[@]}" --out "$out/lm-nccl"
else
    echo "=== lm-nccl: skipped, $gpus GPU (an nccl run needs two)"
fi
part gpu 170 $py benchmarks/gpu.py --budget 120 --out "$out/gpu.json"
part cpu-quick 150 env OMP_NUM_THREADS=1 $py benchmarks/cpu.py --quick --threads 1 --skip-reference \
    --out "$out/cpu-quick.json"
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")"
echo "=== wrote $out.tgz"
