#!/usr/bin/env bash
# `make image`: build the project's Dockerfile into $IMAGE (default dlm-guard:dev).
#
# Engine: docker when a daemon answers, else podman (installed with apt-get when missing).
# Base image: $PYTHON_IMAGE when set; else the official python:3.11-slim when its registry
# answers within a few seconds; else a local stand-in made from this machine's own Debian
# sources with mmdebstrap (python3 + python3-venv + ca-certificates, a venv at /usr/local so
# pip, python and PATH behave as in the slim image), kept as localhost/dlm-guard-python:<suite>.
#
# Environment: IMAGE, PYTHON_IMAGE, IMAGE_ENGINE (docker|podman), IMAGE_CACHE=1 (let podman
# reuse layers: off by default, buildah 1.28 can reuse a stale `RUN --mount=...,from=builder`
# layer after a source change; off also keeps no intermediate images), IMAGE_PROBE_TIMEOUT
# (seconds, default 5).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/image/engine.sh
. tools/image/engine.sh

IMAGE="${IMAGE:-dlm-guard:dev}"
OFFICIAL_PYTHON_IMAGE=docker.io/library/python:3.11-slim
PROBE_URL=https://registry-1.docker.io/v2/
PROBE_TIMEOUT="${IMAGE_PROBE_TIMEOUT:-5}"

# The CA bundle pip inside the build must trust: the host's, so a TLS-intercepting proxy works.
host_ca_bundle() {
  local candidate
  for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" \
      /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -n "$candidate" ] && [ -s "$candidate" ]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# Any HTTP answer (401 is the normal one) means the registry is reachable.
registry_answers() {
  local code
  code="$(curl -sS -o /dev/null -m "$PROBE_TIMEOUT" -w '%{http_code}' "$PROBE_URL" 2>/dev/null)" \
    || return 1
  [ "$code" = 200 ] || [ "$code" = 401 ]
}

# The uid and gid of the chart's securityContext (charts/dlm-guard/values.yaml): the one source,
# passed to the Dockerfile as UID/GID (its defaults are kept equal by tests/image).
chart_ids() {
  awk '/^securityContext:/ {in_sc = 1; next}
       /^[^ #]/ {in_sc = 0}
       in_sc && $1 == "runAsUser:" {uid = $2}
       in_sc && $1 == "runAsGroup:" {gid = $2}
       END {if (uid ~ /^[0-9]+$/ && gid ~ /^[0-9]+$/) print uid, gid; else exit 1}' \
    charts/dlm-guard/values.yaml
}

debian_suite() {
  # shellcheck disable=SC1091
  (. /etc/os-release && [ "${ID:-}" = debian ] && printf '%s\n' "${VERSION_CODENAME:?}")
}

# The machine's own Debian sources (deb822 or one-line files that name a Debian archive).
debian_sources() {
  local file
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] && grep -Eq '^[^#]*(debian\.org|/debian)' "$file" && printf '%s\n' "$file"
  done
  return 0
}

make_local_python_image() {
  local suite="$1" tag="$2"
  ensure_packages mmdebstrap=mmdebstrap
  local sources=()
  mapfile -t sources < <(debian_sources)
  [ "${#sources[@]}" -gt 0 ] || die "no Debian apt sources found in /etc/apt to build a base image"
  log "no registry answers: building $tag with mmdebstrap from ${sources[*]} (about a minute)"
  local rootfs="$ENGINE_TMP/python-base.tar"
  # No docs, man pages or translations: the slim image leaves them out too. The hooks' "$1"
  # (the new root) is expanded by mmdebstrap, not here.
  # shellcheck disable=SC2016
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    "$suite" "$rootfs" "${sources[@]}" >&2
  "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$rootfs" "$tag" >/dev/null
}

choose_python_image() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    log "base image: $PYTHON_IMAGE (from PYTHON_IMAGE)"
    printf '%s\n' "$PYTHON_IMAGE"
    return
  fi
  if registry_answers; then
    log "base image: $OFFICIAL_PYTHON_IMAGE (the registry answers)"
    printf '%s\n' "$OFFICIAL_PYTHON_IMAGE"
    return
  fi
  local suite
  suite="$(debian_suite)" || die "no registry reachable and this is not Debian: set PYTHON_IMAGE"
  local tag="localhost/dlm-guard-python:$suite"
  if "$ENGINE" image inspect "$tag" >/dev/null 2>&1; then
    log "base image: $tag (local, made earlier from Debian packages; no registry answers)"
  else
    make_local_python_image "$suite" "$tag"
    log "base image: $tag (made now from Debian packages)"
  fi
  printf '%s\n' "$tag"
}

main() {
  if [ "${1:-}" = --print-ids ]; then
    chart_ids
    return
  fi
  local ids
  ids="$(chart_ids)" || die "no numeric securityContext.runAsUser/runAsGroup in charts/dlm-guard/values.yaml"
  image_engine_init
  ensure_packages curl=curl
  local started=$SECONDS python_image
  python_image="$(choose_python_image)"
  log "base image ready after $((SECONDS - started)) s"
  local args=(build --tag "$IMAGE" --build-arg "PYTHON_IMAGE=$python_image" --file Dockerfile
    --build-arg "UID=${ids% *}" --build-arg "GID=${ids#* }")
  local bundle
  if bundle="$(host_ca_bundle)"; then
    args+=(--secret "id=ca-bundle,src=$bundle")
  fi
  if [ "$ENGINE" = podman ]; then
    # Host network: no CNI/netavark setup needed for pip to reach PyPI from RUN steps.
    args+=(--network host)
    if [ "${IMAGE_CACHE:-0}" = 1 ]; then
      args+=(--layers)
    else
      # Without the cache no intermediate image is kept either (each would cost 200-300 MB).
      args+=(--no-cache --layers=false)
    fi
  fi
  log "$ENGINE ${args[*]} ."
  "$ENGINE" "${args[@]}" . >&2
  # The previous $IMAGE, now untagged: dangling images of this Dockerfile only.
  "$ENGINE" image prune --force --filter "label=org.opencontainers.image.title=dlm-guard" \
    >/dev/null 2>&1 || true
  local size
  size="$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")"
  log "built $IMAGE in $((SECONDS - started)) s: $((size / 1000000)) MB uncompressed"
}

main "$@"
