#!/usr/bin/env bash
# The main job on the embedded default: `bash run.sh` (under 30 min on 2 CPU cores) or
# `bash run.sh --quick` (under 5 min). Sets up .venv first if needed; see reproduce.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/venv.sh"
exec "$PY" reproduce.py "$@"
