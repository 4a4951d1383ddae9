# Sourced by run.sh and test.sh: makes sure .venv exists at the repository root with the pinned
# requirements, reinstalling only when a requirements file changed. Sets $PY to its python.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
PY="$venv/bin/python"
if [ ! -x "$PY" ]; then
    echo "[setup] creating $venv"
    python3 -m venv "$venv" || { echo "[setup] could not create a virtual environment: install python3-venv (Python >= 3.10)" >&2; exit 1; }
fi
stamp="$venv/.requirements.sha1"
want="$(cat "$root/requirements.txt" "$root/requirements-nodeps.txt" | sha1sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing the pinned requirements into $venv (first run: a few minutes)"
    if ! "$PY" -m pip install -q -r "$root/requirements.txt" ||
       ! "$PY" -m pip install -q --no-deps -r "$root/requirements-nodeps.txt"; then
        echo "[setup] pip could not install a pinned package (see its message above): check access to the" \
             "package registry, then rerun; nothing else was changed." >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
