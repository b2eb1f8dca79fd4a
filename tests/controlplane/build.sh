#!/usr/bin/env bash
# Builds the pinned control plane used by the end-to-end tests:
#   etcd, kube-apiserver, kube-controller-manager and helm
# from the Go modules pinned in tests/controlplane/{etcd,kube,helm}/go.{mod,sum}.
#
# Output:  <repo>/.cache/controlplane/bin/{etcd,kube-apiserver,kube-controller-manager,helm}
# Caches:  <repo>/.cache/go/mod (GOMODCACHE) and <repo>/.cache/go/build (GOCACHE)
#
# The build is skipped when the stamp file matches the pinned versions and all
# binaries exist. Options / environment:
#   --force                     rebuild even if the stamp matches
#   CONTROLPLANE_BUILD_JOBS=N   go build -p N (default 2; linking kube-apiserver
#                               needs ~3 GiB per job)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_name=controlplane
# shellcheck source=../build-lib.sh
source "$here/../build-lib.sh"
parse_build_args 13 "$@"
require_go 1.26 # go.mod files say "go 1.26.0"
go_environment "$repo"

out="$repo/.cache/controlplane"
bin="$out/bin"
stamp="$out/stamp"
binaries=(etcd kube-apiserver kube-controller-manager helm)

jobs="${CONTROLPLANE_BUILD_JOBS:-2}"
mkdir -p "$bin"

# Everything that determines the output: the pinned modules, this script
# (flags, ldflags) and the Go toolchain.
fingerprint() {
    (
        cd "$here"
        sha256sum build.sh etcd/go.mod etcd/go.sum kube/go.mod kube/go.sum helm/go.mod helm/go.sum
        build_lib_digest
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    ) | sha256sum | cut -d' ' -f1
}

module_version() { # module_version <dir> <module path>
    (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

print_versions() {
    echo "controlplane binaries in $bin:"
    echo "  etcd:                    $("$bin/etcd" --version | head -n1)"
    echo "  kube-apiserver:          $("$bin/kube-apiserver" --version)"
    echo "  kube-controller-manager: $("$bin/kube-controller-manager" --version)"
    echo "  helm:                    $("$bin/helm" version --short)"
}

want="$(fingerprint)"
if up_to_date "$stamp" "$want" "${binaries[@]/#/$bin/}"; then
    echo "controlplane: up to date ($stamp)"
    print_versions
    exit 0
fi

rm -f "$stamp"
start=$SECONDS

etcd_version="$(module_version etcd go.etcd.io/etcd/server/v3)"
kube_version="$(module_version kube k8s.io/kubernetes)"
helm_version="$(module_version helm helm.sh/helm/v3)"
helm_client_go="$(module_version helm k8s.io/client-go)" # v0.X.Y -> Kubernetes 1.X

[[ "$kube_version" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version $kube_version"
kube_minor="${BASH_REMATCH[1]}"
[[ "$helm_client_go" =~ ^v0\.([0-9]+)\. ]] || die "unexpected k8s.io/client-go version $helm_client_go in helm/go.mod"
helm_kube_minor="${BASH_REMATCH[1]}"

build() { # build <module dir> <output file or dir/> <ldflags> <packages...>
    local dir="$1" output="$2" ldflags="$3"
    shift 3
    echo "controlplane: building $* (go build -p $jobs)"
    (cd "$here/$dir" && go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$output" "$@")
}

# etcd's version is a constant in go.etcd.io/etcd/api/v3/version.
build etcd "$bin/etcd" "-s -w" go.etcd.io/etcd/server/v3

# Without these, binaries built outside the kubernetes repo report v0.0.0.
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean"
done
build kube "$bin/" "$kube_ldflags" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager

# Same variables helm's own Makefile sets for a release build.
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_kube_minor"
done
build helm "$bin/" "$helm_ldflags" helm.sh/helm/v3/cmd/helm

for b in "${binaries[@]}"; do
    [[ -x "$bin/$b" ]] || die "build finished but $bin/$b is missing"
done

{
    echo "fingerprint $want"
    echo "go $go_version"
    echo "etcd $etcd_version"
    echo "kubernetes $kube_version"
    echo "helm $helm_version"
} >"$stamp"
echo "controlplane: built in $((SECONDS - start))s"
print_versions
