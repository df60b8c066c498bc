#!/usr/bin/env bash
# Gather what benchmarks/gpu_session.sh needs on a GPU machine that cannot reach the internet, into
# .device/ (ignored by git; about 10 MB): the diffusers wheel pinned in constraints.txt (for the
# comparison rows) and the CIFAR-10 test images. Run here, then hand .device to the GPU machine:
#   bash benchmarks/gpu_prepare.sh
#   (on the GPU machine) OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
# PYTHON (default: .venv/bin/python, else python3) runs pip; DATA (default ../shared/data) holds
# cifar10-test-jpg.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
data=${DATA:-../shared/data}
pin=$(grep -E '^diffusers==' constraints.txt | cut -d' ' -f1)
[ -n "$pin" ] || { echo "gpu_prepare: constraints.txt pins no diffusers" >&2; exit 1; }
mkdir -p .device/whl .device/data
"$py" -m pip download --quiet --no-deps --dest .device/whl "$pin"
[ -f "$data/cifar10-test-jpg.tar.gz" ] || { echo "gpu_prepare: no $data/cifar10-test-jpg.tar.gz" >&2; exit 1; }
cp -p "$data/cifar10-test-jpg.tar.gz" .device/data/
echo "gpu_prepare: .device holds $(ls .device/whl) and cifar10-test-jpg.tar.gz ($(du -sh .device | cut -f1))"
