# shellcheck shell=bash
# Sourced by build.sh and smoke.sh: picks the container engine and makes podman work here.
#
# After `image_engine_init`:
#   ENGINE         docker (a reachable daemon) or podman (installed with apt-get when missing)
#   ENGINE_TMP     a private temporary folder, removed on exit (holds podman's configuration)
# and, for podman, CONTAINERS_CONF / CONTAINERS_STORAGE_CONF are exported for every child.
#
# Why the podman configuration: on a host with hybrid cgroups (v1 controllers, no systemd as
# PID 1) and without CAP_SYS_RESOURCE, Debian's podman 4.3 only runs containers with runc (crun
# refuses hybrid cgroups), the cgroupfs cgroup manager, file events and logs (no journald) and
# ulimits at or below the host's hard limits (podman's defaults raise nofile/nproc above them).

IMAGE_ENGINE_TIMEOUT="${IMAGE_ENGINE_TIMEOUT:-5}"   # seconds to decide whether a daemon answers

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

# apt-get install the given Debian packages for the commands that are missing, and say so.
ensure_packages() {
  local missing=()
  local pair command package
  for pair in "$@"; do
    command="${pair%%=*}" package="${pair#*=}"
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 \
    || die "missing ${missing[*]} and no apt-get to install them: install them yourself"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing ${missing[*]} with apt-get (not found on this machine)"
  "${sudo[@]}" apt-get update -q >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

_docker_daemon_answers() {
  command -v docker >/dev/null 2>&1 && timeout "$IMAGE_ENGINE_TIMEOUT" docker info >/dev/null 2>&1
}

_podman_config() {
  local nofile nproc
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$ENGINE_TMP/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  # The default stores (root: /var/lib/containers, else ~/.local/share/containers), overlay.
  local root="${XDG_DATA_HOME:-$HOME/.local/share}/containers/storage"
  local run="${XDG_RUNTIME_DIR:-/tmp/podman-run-$(id -u)}/containers"
  if [ "$(id -u)" -eq 0 ]; then
    root=/var/lib/containers/storage run=/run/containers/storage
  fi
  cat >"$ENGINE_TMP/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "${IMAGE_STORAGE_ROOT:-$root}"
runroot = "${IMAGE_STORAGE_RUNROOT:-$run}"
EOF
  export CONTAINERS_CONF="$ENGINE_TMP/containers.conf"
  export CONTAINERS_STORAGE_CONF="$ENGINE_TMP/storage.conf"
}

image_engine_init() {
  ENGINE_TMP="$(mktemp -d "${TMPDIR:-/tmp}/dlm-guard-image.XXXXXX")"
  # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
  trap "rm -rf '$ENGINE_TMP'" EXIT
  if [ -n "${IMAGE_ENGINE:-}" ]; then
    ENGINE="$IMAGE_ENGINE"
  elif _docker_daemon_answers; then
    ENGINE=docker
  else
    ENGINE=podman
  fi
  case "$ENGINE" in
    docker) _docker_daemon_answers || die "IMAGE_ENGINE=docker but no Docker daemon answers" ;;
    podman)
      ensure_packages podman=podman runc=runc
      _podman_config
      ;;
    *) die "IMAGE_ENGINE must be docker or podman, not '$ENGINE'" ;;
  esac
  export ENGINE ENGINE_TMP
  log "engine: $ENGINE ($("$ENGINE" --version 2>/dev/null | head -1))"
}
