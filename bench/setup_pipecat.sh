#!/usr/bin/env bash
# Create bench/.venv-pipecat with a pinned pipecat-ai (SmallWebRTC transport) for the peer bench.
# Idempotent: does nothing when the venv already has the pinned version.
set -euo pipefail
PIPECAT_VERSION="${PIPECAT_VERSION:-1.14.0}"
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv-pipecat"
PY="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import importlib.metadata as m,sys; import fastapi; sys.exit(m.version('pipecat-ai')!='$PIPECAT_VERSION')" 2>/dev/null; then
  echo "pipecat-ai $PIPECAT_VERSION already in $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "pipecat-ai[webrtc]==$PIPECAT_VERSION" "fastapi" "aiohttp>=3.9" "uvloop"
"$VENV/bin/python" -c "import pipecat, importlib.metadata as m; print('pipecat-ai', m.version('pipecat-ai'))"
