#!/usr/bin/env bash
# The test suite: `bash test.sh` (sets up .venv first if needed). Extra arguments go to pytest,
# e.g. `bash test.sh -m "not slow"` for the unit tests alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/venv.sh"
exec "$PY" -m pytest "$@"
