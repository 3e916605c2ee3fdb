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
exec python -m pytest tests "$@"
