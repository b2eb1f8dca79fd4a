#!/usr/bin/env bash
# Builds the kubelet keyring oracle (main.go) from the modules pinned in go.mod/go.sum:
# the kubelet's pkg/credentialprovider and distribution/reference, at the release the control
# plane is built from.
#
# Output:  <repo>/.cache/oracle/bin/kubelet-keyring-oracle
# Caches:  <repo>/.cache/go/mod (GOMODCACHE) and <repo>/.cache/go/build (GOCACHE), shared with
#          tests/controlplane/build.sh, so the kubernetes packages are compiled once for both.
#
# The build is skipped when the stamp matches main.go, go.mod, go.sum, this script and the Go
# toolchain. Options / environment:
#   --force                 rebuild even if the stamp matches
#   ORACLE_BUILD_JOBS=N     go build -p N (default 2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_name=oracle
# shellcheck source=../build-lib.sh
source "$here/../build-lib.sh"
parse_build_args 13 "$@"
require_go 1.26 # go.mod says "go 1.26.0"
# The same environment as the control-plane build, so that compiled packages are shared.
go_environment "$repo"

out="$repo/.cache/oracle"
bin="$out/bin/kubelet-keyring-oracle"
stamp="$out/stamp"

jobs="${ORACLE_BUILD_JOBS:-2}"
mkdir -p "$(dirname "$bin")"

want="$(
    cd "$here"
    {
        sha256sum build.sh main.go go.mod go.sum
        build_lib_digest
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    } | sha256sum | cut -d' ' -f1
)"
if up_to_date "$stamp" "$want" "$bin"; then
    echo "oracle: up to date ($bin, $(sed -n 's/^kubernetes //p' "$stamp"))"
    exit 0
fi

rm -f "$stamp"
start=$SECONDS
kube_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
reference_version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/distribution/reference)"
echo "oracle: building the kubelet keyring oracle (k8s.io/kubernetes $kube_version, go build -p $jobs)"
(cd "$here" && go build -p "$jobs" -trimpath -ldflags "-s -w" -o "$bin" .)
{
    echo "fingerprint $want"
    echo "go $go_version"
    echo "kubernetes $kube_version"
    echo "reference $reference_version"
} >"$stamp"
echo "oracle: built $bin in $((SECONDS - start))s"
