#!/usr/bin/env bash
# The test suite, from a fresh machine: installs what is missing (idempotent), then runs pytest.
#   bash scripts/test.sh            # whole suite
#   bash scripts/test.sh -k designer  # extra args go to pytest
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
# One torch thread per process: env worker processes already own the cores, and OpenMP threads
# spinning beside them made CPU training 14-25x slower here (benchmarks/RESULTS.md).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest tests "$@"
