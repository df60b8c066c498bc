#!/usr/bin/env bash
# The test suite under other floating-point code paths, one setting after another:
#
#   tests/numerics_matrix.sh PYTHON [pytest options]      (./run test-numerics does this in .venv)
#
# native      the machine's own kernels, 1 torch thread (what `./run test` runs)
# threads2    2 torch threads: reductions and LAPACK calls split their work differently
# scalar      ATEN_CPU_CAPABILITY=default: torch's unvectorised kernels (other summation orders,
#             and other last bits in seeded float32 randn draws: perturbed inputs for float32 tests)
# blas        MKL_CBWR=COMPATIBLE (torch's MKL BLAS/LAPACK) and OPENBLAS_CORETYPE=Prescott
#             (numpy's and scipy's OpenBLAS): the libraries' generic, unblocked kernels
#
# NUMERICS_SETTINGS="scalar blas" picks some of them. A test that passes under one and fails under
# another sits on a rounding edge: its tolerance is tighter than the problem's rounding error.
set -uo pipefail
py="${1:?usage: tests/numerics_matrix.sh PYTHON [pytest options]}"
shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declare -A env_of=(
  [native]=""
  [threads2]="SCOREKIT_TEST_THREADS=2"
  [scalar]="ATEN_CPU_CAPABILITY=default"
  [blas]="MKL_CBWR=COMPATIBLE OPENBLAS_CORETYPE=Prescott"
)
settings="${NUMERICS_SETTINGS:-native threads2 scalar blas}"
status=0
summary=()
for name in $settings; do
  [ -n "${env_of[$name]+set}" ] || { echo "numerics_matrix: unknown setting '$name' (known: ${!env_of[*]})" >&2; exit 2; }
  echo "=== $name: ${env_of[$name]:-(environment as is)}"
  # shellcheck disable=SC2086  # the setting is a list of NAME=VALUE words
  log="$(mktemp)"
  env ${env_of[$name]} "$py" -m pytest -n "${SCOREKIT_TEST_WORKERS:-auto}" -q "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  result="$(grep -E '[0-9]+ (passed|failed|errors?)|no tests ran' "$log" | tail -n 1)"
  summary+=("$name: ${result:-no result line} (exit $rc)")
  rm -f "$log"
  [ "$rc" -eq 0 ] || status=1
done
printf '%s\n' "=== summary" "${summary[@]}"
exit $status
