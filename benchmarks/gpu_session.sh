#!/usr/bin/env bash
# One timed GPU session: where the host waits for the GPU, the attention layout, the GPU throughput
# benchmark, then the README's CIFAR-10 GPU commands.
# Run from the repository root on a machine with a CUDA torch:
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
# Inputs that are not in the repository, for a machine without internet (benchmarks/gpu_prepare.sh
# gathers both into .device/, which git ignores; the device tool carries it with carry [".device"]):
#   WHEELS (default .device/whl): wheels installed into SITE first, e.g. diffusers
#     (pip download --no-deps -d .device/whl diffusers==0.42.1); may be empty.
#   ../shared/data/cifar10-test-jpg.tar.gz, copied from .device/data when it is missing.
# Through the device tool, whose $OUT brings back 8 files at most, write elsewhere and pack:
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh; tar czf $OUT/gpu-session.tgz -C /tmp/gpu-out .
# Parts:
#   "syncs": benchmarks/gpu_sync_check.py -- every operation that makes the host wait for the GPU inside
#     the training steps, the samplers, guidance and the editing and inverse-problem methods (<= 90 s).
#   "attention": benchmarks/attention_layout.py -- the attention block with Q, K, V laid out for SDPA's fused
#     kernels against the convolution's layout (math kernel), which AttentionBlock.fused_layout="auto" picks (<= 40 s).
#   "bench": benchmarks/gpu_throughput.py -- the base preset (training step in eager / compiled x
#     fp32-TF32 / bf16, the training loop, sampling, the measured matmul peak), then small and tiny
#     (training step only); each under a --budget and a timeout, its report rewritten after every row.
#   "gpu" (only when enough of TOTAL is left): train the base preset on the CIFAR-10 test images
#     for a fixed budget, sample 10,000 images with DPM-Solver++(2M) in 20 steps, score them with
#     scorekit eval (a CIFAR-10 feature network trained on the same images: FID, KID, IS, P/R).
#   "bf16" (not in the default PARTS): benchmarks/bf16_training.py on CIFAR-10 with the small preset --
#     bf16 autocast against float32 (TF32 off) training on the same seed, and a second float32 seed.
# PARTS (default "syncs attention bench gpu") picks parts; TOTAL (default 560 s) bounds the whole script. For a dry run
# on a CPU: DEVICE=cpu MODEL=tiny NUM=200 BENCH_ARGS="--quick --presets tiny" ATTENTION_ARGS="--presets tiny
# --batch 4 --rounds 1 --iters 1" SITE=/tmp/some-site OUT=/tmp/out TOTAL=900, with the project's python first
# on PATH (the base preset, even at --quick's toy size, can use up the bench's budget on a busy CPU before its
# loop and sampling rows).
set -u
T0=$SECONDS
TOTAL=${TOTAL:-560} PARTS=${PARTS:-syncs attention bench gpu} DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-base} NUM=${NUM:-10000}
SITE=${SITE:-/tmp/site} BENCH_ARGS=${BENCH_ARGS:-} WHEELS=${WHEELS:-.device/whl}
OUT=${OUT:?set OUT to the folder of the results}; mkdir -p $OUT
left() { echo $(( TOTAL - (SECONDS - T0) )); }
upto() { local s=$(( $(left) - $1 )); echo $(( s > 10 ? s : 10 )); }   # seconds left, keeping $1 for later
WORK=$(mktemp -d)     # run folders (checkpoints stay out of OUT)
note() { echo "[$(( SECONDS - T0 )) s] $*" | tee -a $OUT/session.log; }
wanted() {   # wanted PART SECONDS: PART is in PARTS and SECONDS of TOTAL are left (else noted as skipped)
  [[ " $PARTS " == *" $1 "* ]] || return 1
  [ $(left) -ge $2 ] && return 0
  note "$1 part skipped: $(left) s left, it needs $2"; return 1
}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE $WHEELS/*.whl || exit 1
fi
export PYTHONPATH=$SITE:$PWD/src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
CIFAR=../shared/data/cifar10-test-jpg.tar.gz
[ -e $CIFAR ] || { mkdir -p ../shared && cp -r .device/data ../shared/; }
{ nvidia-smi; nproc; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  python3 -c "import diffusers; print('diffusers', diffusers.__version__)"; } > $OUT/machine.txt 2>&1
note "set up"

if wanted syncs 450; then
  timeout 90 python3 benchmarks/gpu_sync_check.py --device $DEVICE --out $OUT > $OUT/syncs.log 2>&1
  note "syncs: exit $?"
fi
if wanted attention 400; then
  timeout 40 python3 benchmarks/attention_layout.py --device $DEVICE ${ATTENTION_ARGS:-} --out $OUT > $OUT/attention.log 2>&1
  note "attention: exit $?"
fi
if [[ " $PARTS " == *" bench "* ]]; then
  timeout 220 python3 benchmarks/gpu_throughput.py --presets base --measure-peak --budget 160 $BENCH_ARGS \
    --out $OUT/bench-base > $OUT/bench-base.log 2>&1
  note "bench base: exit $?"
  b=$(( $(left) - 300 )); b=$(( b > 90 ? 90 : b ))
  if [ $b -ge 30 ]; then
    timeout $(( b + 40 )) python3 benchmarks/gpu_throughput.py --presets small,tiny --parts step --budget $b \
      $BENCH_ARGS --out $OUT/bench-small-tiny > $OUT/bench-small-tiny.log 2>&1
    note "bench small,tiny: exit $?"
  else
    note "bench small,tiny skipped: $(left) s left"
  fi
fi

if wanted gpu 210; then
  mkdir -p $OUT/gpu
  minutes=$(python3 -c "print(round(min(($(left) - 170) / 60, 10), 1))")
  note "gpu part: training for $minutes minutes"
  timeout $(python3 -c "print(int($minutes * 60 + 60))") python3 -m scorekit train --data folder:$CIFAR --flip \
    --model $MODEL --device $DEVICE --batch-size 128 --lr 2e-4 --warmup 500 --mixed-precision bf16 --steps 200000 \
    --max-minutes $minutes --no-progress --out $WORK/cifar-base > $OUT/gpu/train.log 2>&1
  note "train: exit $?"
  cp $WORK/cifar-base/{config.json,metrics.jsonl,loss.png} $OUT/gpu/ 2>/dev/null
  timeout 30 python3 -m scorekit sample $WORK/cifar-base --num 100 --sampler dpmpp_2m --steps 20 --device $DEVICE \
    --no-progress --out $OUT/gpu/samples-100.png > /dev/null 2>&1
  timeout $(upto 100) python3 -m scorekit sample $WORK/cifar-base --num $NUM --sampler dpmpp_2m \
    --steps 20 --batch-size 1000 --device $DEVICE --no-progress --out $WORK/samples.png > $OUT/gpu/sample.log 2>&1
  note "sample $NUM: exit $?"
  timeout $(upto 5) python3 -m scorekit eval $WORK/samples.npz --ref folder:$CIFAR --features cifar10 \
    --device $DEVICE --cache $WORK/cache --no-progress --out $OUT/gpu/eval.json > $OUT/gpu/eval.log 2>&1
  note "eval: exit $?"
fi
if wanted bf16 150; then
  timeout $(upto 5) python3 benchmarks/bf16_training.py --data folder:$CIFAR --train-size 9000 --holdout 1000 \
    --model ${BF16_MODEL:-small} --steps ${BF16_STEPS:-1000} --batch-size 128 --lr 2e-4 --warmup 100 \
    --device $DEVICE --no-progress --out $WORK/bf16 > $OUT/bf16.log 2>&1
  note "bf16: exit $?"
  mkdir -p $OUT/bf16 && cp $WORK/bf16/report.* $WORK/bf16/loss_curves.png $OUT/bf16/ 2>/dev/null
  for run in fp32 bf16 fp32-seed-1; do cp $WORK/bf16/$run/metrics.jsonl $OUT/bf16/$run-metrics.jsonl 2>/dev/null; done
fi
note "done"
ls -laR $OUT | head -60
