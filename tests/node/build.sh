#!/usr/bin/env bash
# Builds the pinned parts of the test node (crates/test-support/src/node.rs starts them):
#   kubelet and kube-scheduler  from tests/controlplane/kube/go.mod (the control plane's pin,
#                               so versions agree and Go's build cache is shared with it)
#   containerd, containerd-shim-runc-v2, ctr  from tests/node/containerd/go.mod
#   the CNI plugins bridge, host-local, loopback  from tests/node/cni/go.mod
#   runc                        Debian's, from the registry tools (tests/registry/build.sh)
#   the sandbox image           the registry tools' `sleeper`, as an OCI archive for
#                               `ctr images import`, assembled here with tar and sha256sum
#
# Needs the registry tools (`make registry-tools`) first.
# Output:  <repo>/.cache/node/bin/{kubelet,kube-scheduler,containerd,containerd-shim-runc-v2,ctr,runc}
#          <repo>/.cache/node/cni/{bridge,host-local,loopback}
#          <repo>/.cache/node/images/pause.tar
# Caches:  <repo>/.cache/go/mod (GOMODCACHE) and <repo>/.cache/go/build (GOCACHE), as
#          tests/controlplane/build.sh
#
# Skipped when the stamp matches the pins and every output exists. Options / environment:
#   --force               rebuild even if the stamp matches
#   NODE_BUILD_JOBS=N     go build -p N (default 2)
set -euo pipefail

PAUSE_IMAGE="localhost/pullsecret-injector-node/pause:1"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_name=node
# shellcheck source=../build-lib.sh
source "$here/../build-lib.sh"
parse_build_args 21 "$@"
out="$repo/.cache/node"
bin="$out/bin"
cni="$out/cni"
images="$out/images"
stamp="$out/stamp"
registry_tools="$repo/.cache/registry/bin"
binaries=(kubelet kube-scheduler containerd containerd-shim-runc-v2 ctr runc)
plugins=(bridge host-local loopback)

for tool in runc sleeper; do
    [[ -x "$registry_tools/$tool" ]] ||
        die "$registry_tools/$tool not found: build the registry tools first (make registry-tools)"
done

require_go 1.26.8 # tests/node/cni/go.mod says "go 1.26.8" (containernetworking/plugins v1.10.0)
go_environment "$repo"
jobs="${NODE_BUILD_JOBS:-2}"

fingerprint() {
    (
        cd "$here/.."
        sha256sum node/build.sh controlplane/kube/go.mod controlplane/kube/go.sum \
            node/containerd/go.mod node/containerd/go.sum node/cni/go.mod node/cni/go.sum
        sha256sum "$registry_tools/runc" "$registry_tools/sleeper" | cut -d' ' -f1
        build_lib_digest
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    ) | sha256sum | cut -d' ' -f1
}

module_version() { # module_version <dir> <module path>
    (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

print_versions() {
    echo "node binaries in $bin:"
    echo "  kubelet:        $("$bin/kubelet" --version)"
    echo "  kube-scheduler: $("$bin/kube-scheduler" --version)"
    echo "  containerd:     $("$bin/containerd" --version)"
    echo "  runc:           $("$bin/runc" --version | head -n1)"
    echo "  CNI plugins:    $("$cni/bridge" 2>&1 </dev/null | head -n1)"
    echo "  sandbox image:  $PAUSE_IMAGE ($images/pause.tar)"
}

want="$(fingerprint)"
if up_to_date "$stamp" "$want" "${binaries[@]/#/$bin/}" "${plugins[@]/#/$cni/}" "$images/pause.tar"; then
    echo "node: up to date ($stamp)"
    print_versions
    exit 0
fi

rm -f "$stamp"
mkdir -p "$bin" "$cni" "$images"
start=$SECONDS

build() { # build <module dir> <output file or dir/> <ldflags> [-tags t] <packages...>
    local dir="$1" output="$2" ldflags="$3"
    shift 3
    echo "node: building ${*: -1} ... (go build -p $jobs in $dir)"
    (cd "$here/$dir" && go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$output" "$@")
}

# kubelet and kube-scheduler: the same pin and version stamping as the control plane.
kube_version="$(module_version ../controlplane/kube k8s.io/kubernetes)"
[[ "$kube_version" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version $kube_version"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=${BASH_REMATCH[1]}"
    kube_ldflags+=" -X $pkg.gitTreeState=clean"
done
build ../controlplane/kube "$bin/" "$kube_ldflags" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler

# containerd: what its Makefile sets for a release, without btrfs (a cgo library).
containerd_version="$(module_version containerd github.com/containerd/containerd/v2)"
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
containerd_ldflags+=" -X github.com/containerd/containerd/v2/version.Revision=module-proxy"
build containerd "$bin/" "$containerd_ldflags" -tags no_btrfs \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr

cni_version="$(module_version cni github.com/containernetworking/plugins)"
build cni "$cni/" "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/main/loopback

# runc (Debian's: cgo and libseccomp, so seccomp profiles work) beside the node's binaries.
install -m 0755 "$registry_tools/runc" "$bin/runc"
"$bin/runc" --version >/dev/null || die "runc does not run here (it needs libseccomp2, which apt itself depends on)"

# The sandbox image: the sleeper (a static Go program that waits for SIGTERM and reaps
# orphans), as an OCI image layout in a tar archive.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"
install -m 0755 "$registry_tools/sleeper" "$work/rootfs/sleeper"
deterministic_tar() { # deterministic_tar <output> <dir>: same bytes for the same files
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$2" -cf "$1" .
}
blob() { # blob <file> -> prints "<sha256> <size>" and stores the file as a blob
    local digest size
    digest="$(sha256sum "$1" | cut -d' ' -f1)"
    size="$(stat -c %s "$1")"
    cp "$1" "$work/oci/blobs/sha256/$digest"
    echo "$digest $size"
}
deterministic_tar "$work/layer.tar" "$work/rootfs"
read -r layer_digest layer_size < <(blob "$work/layer.tar")
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/sleeper"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(go env GOARCH)" "$layer_digest" >"$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"1"}}]}' \
    "$manifest_digest" "$manifest_size" "$PAUSE_IMAGE" >"$work/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
deterministic_tar "$images/pause.tar.tmp" "$work/oci"
mv "$images/pause.tar.tmp" "$images/pause.tar"

for f in "${binaries[@]/#/$bin/}" "${plugins[@]/#/$cni/}"; do
    [[ -x "$f" ]] || die "build finished but $f is missing"
done

{
    echo "fingerprint $want"
    echo "go $go_version"
    echo "kubernetes $kube_version"
    echo "containerd $containerd_version"
    echo "cni-plugins $cni_version"
    echo "runc $("$bin/runc" --version | head -n1)"
    echo "pause-image $PAUSE_IMAGE"
} >"$stamp"
echo "node: built in $((SECONDS - start))s"
print_versions
