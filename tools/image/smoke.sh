#!/usr/bin/env bash
# `make image-test`: run tools/image/smoke.py against $IMAGE (default dlm-guard:dev) with the
# same engine configuration as the build. Every container the test starts carries a label
# unique to this run; the EXIT trap removes them all, even when the Python process was killed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/image/engine.sh
. tools/image/engine.sh

IMAGE="${IMAGE:-dlm-guard:dev}"
PYTHON="${PYTHON:-.venv/bin/python}"

image_engine_init
RUN_LABEL="dlm-guard-smoke=$$-$(date +%s)"
remove_containers() {
  local ids
  ids="$("$ENGINE" ps --all --quiet --filter "label=$RUN_LABEL" 2>/dev/null || true)"
  if [ -n "$ids" ]; then
    log "removing leftover containers: $(echo "$ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one id per word
    "$ENGINE" rm --force $ids >/dev/null 2>&1 || true
  fi
  rm -rf "$ENGINE_TMP"
}
trap remove_containers EXIT
trap 'exit 130' INT TERM

"$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run \`make image\` first"
"$PYTHON" tools/image/smoke.py --image "$IMAGE" --engine "$ENGINE" --label "$RUN_LABEL"
