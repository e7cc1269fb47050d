#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
# kwok) from Go modules into a cache outside the repo and prints the bin directory on stdout.
# Idempotent: once every component is built and stamped with its version, it prints the path and
# exits at once. Everything except that path goes to stderr so callers can capture it.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3 # k8s v1.37.2 requires the etcd v3.7.0 client; run a v3.7 server to match
KWOK_VERSION=v0.8.0

CACHE_DIR="${SLUICE_CACHE:-$HOME/.cache/sluice}/k8s/$K8S_VERSION"
BIN_DIR="$CACHE_DIR/bin"
declare -A VERSION_OF=([kubernetes]=$K8S_VERSION [etcd]=$ETCD_VERSION [kwok]=$KWOK_VERSION)
declare -A OUTPUTS_OF=(
    [kubernetes]="bin/kube-apiserver bin/kube-controller-manager bin/kube-scheduler"
    [etcd]="bin/etcd"
    [kwok]="bin/kwok kwok-stages.yaml"
)

log() { echo "build-control-plane: $*" >&2; }

stamp_of() { echo "$CACHE_DIR/.$1.version"; }

is_built() {
    local component=$1 stamp output
    stamp=$(stamp_of "$component")
    [[ -f "$stamp" && "$(<"$stamp")" == "${VERSION_OF[$component]}" ]] || return 1
    for output in ${OUTPUTS_OF[$component]}; do
        [[ -e "$CACHE_DIR/$output" ]] || return 1
    done
}

all_built() { is_built kubernetes && is_built etcd && is_built kwok; }

if all_built; then
    echo "$BIN_DIR"
    exit 0
fi

mkdir -p "$BIN_DIR"
# A second caller waits here and then finds everything built.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another build holds $CACHE_DIR/.lock; waiting for it"
    flock 9
fi
if all_built; then
    echo "$BIN_DIR"
    exit 0
fi

# The test fixture makes service-account keys with openssl.
if ! command -v openssl >/dev/null; then
    log "openssl missing; installing it with apt-get"
    apt-get update -qq >&2
    apt-get install -y -qq openssl >&2
fi

command -v go >/dev/null || { log "go not found on PATH (need Go >= 1.26)"; exit 1; }
# A toolchain line in any go.mod must never trigger a toolchain download.
export GOTOOLCHAIN=local CGO_ENABLED=0
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if ((${go_minor:-0} < 26)); then
    log "need Go >= 1.26 (k8s $K8S_VERSION and kwok $KWOK_VERSION say go 1.26.0)," \
        "have $(go env GOVERSION)"
    exit 1
fi

started=$SECONDS
work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT
# Outputs land next to BIN_DIR so moving them in is an atomic rename on one filesystem.
out_dir="$CACHE_DIR/.partial"
GO_BUILD=(go build -p 2 -trimpath)

build_kubernetes() {
    local wrapper="$work_dir/k8s" kube_mod module setting binary
    mkdir -p "$wrapper"
    cd "$wrapper"
    go mod init sluice.local/k8s-control-plane 2>/dev/null
    kube_mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    # k8s requires its staging modules at the fake v0.0.0 and replaces them with ./staging,
    # which is not in the module zip. Replace each v0.0.0 requirement with its published tag
    # v0.Y.Z. Only the required ones: some replaced-only modules (sample-controller) are not
    # on every proxy.
    for module in $(sed -n 's#^\s*\(k8s\.io/\S*\) v0\.0\.0$#\1#p' "$kube_mod"); do
        go mod edit -replace="$module=$module@v0.${K8S_VERSION#v1.}"
    done
    # Only the main module's godebug lines count, so carry over k8s' own.
    for setting in $(sed -n 's/^godebug \([^ (][^ ]*\)$/\1/p' "$kube_mod"); do
        go mod edit -godebug="$setting"
    done
    for binary in kube-apiserver kube-controller-manager kube-scheduler; do
        go mod edit -tool="k8s.io/kubernetes/cmd/$binary"
    done
    log "resolving k8s.io/kubernetes@$K8S_VERSION dependencies"
    go mod tidy >&2

    # Stamp versions as hack/lib/version.sh does: unstamped binaries report v0.0.0-master.
    # The tag's commit time stands in for the build date, which keeps builds reproducible.
    local version="${K8S_VERSION#v}" build_date ldflags="-s -w" package
    build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${kube_mod%.mod}.info")
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $package.gitVersion=$K8S_VERSION -X $package.gitMajor=${version%%.*}"
        ldflags+=" -X $package.gitMinor=$(cut -d. -f2 <<<"$version")"
        ldflags+=" -X $package.gitTreeState=clean -X $package.buildDate=$build_date"
    done
    log "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION"
    # Same tags as upstream's hack/lib/golang.sh for non-debug builds.
    "${GO_BUILD[@]}" -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$out_dir/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler

    local reported
    reported=$("$out_dir/kube-apiserver" --version)
    if [[ "$reported" != "Kubernetes $K8S_VERSION" ]]; then
        log "kube-apiserver reports '$reported', expected 'Kubernetes $K8S_VERSION'"
        return 1
    fi
}

build_etcd() {
    # A wrapper of its own: inside the k8s wrapper, MVS could lift etcd's deps (grpc, otel) to
    # versions etcd was never tested with. etcd's own replace lines are ignored as a dependency.
    local wrapper="$work_dir/etcd"
    mkdir -p "$wrapper"
    cd "$wrapper"
    go mod init sluice.local/etcd 2>/dev/null
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" -tool=go.etcd.io/etcd/server/v3
    log "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION dependencies"
    go mod tidy >&2
    log "building etcd $ETCD_VERSION"
    "${GO_BUILD[@]}" -ldflags "-s -w" -o "$out_dir/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
    log "building kwok $KWOK_VERSION"
    # kwok's go.mod has no replace lines, so a plain go install works.
    GOBIN="$out_dir" go install -p 2 -trimpath -ldflags "-s -w" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    # kwok >= v0.8.0 refuses to start without stages; these are the ones kwokctl embeds.
    local stage_dir stage
    stage_dir="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
    for stage in node/fast/node-initialize.yaml \
        node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        echo "---"
        cat "$stage_dir/$stage"
    done >"$out_dir/kwok-stages.yaml"
}

for component in kubernetes etcd kwok; do
    if is_built "$component"; then
        continue
    fi
    rm -rf "$out_dir" "$(stamp_of "$component")"
    mkdir -p "$out_dir"
    # A subshell keeps the build's cd local. Not `is_built || (build)`: errexit is ignored
    # inside a || list, so a failing step would not stop the build.
    ("build_$component")
    # Rename finished outputs into place: a killed build never leaves a half-written binary,
    # and a rerun skips the components an interrupted run already finished.
    for output in "$out_dir"/*; do
        case "$output" in
            *.yaml) mv -f "$output" "$CACHE_DIR/" ;;
            *) mv -f "$output" "$BIN_DIR/" ;;
        esac
    done
    echo "${VERSION_OF[$component]}" >"$(stamp_of "$component")"
done
rmdir "$out_dir"

elapsed=$((SECONDS - started))
log "built k8s $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION" \
    "in $((elapsed / 60))m$((elapsed % 60))s"
echo "$BIN_DIR"
