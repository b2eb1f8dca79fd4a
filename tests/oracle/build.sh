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

MIN_GO_MINOR=26 # go.mod says "go 1.26.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/.cache/oracle"
bin="$out/bin/kubelet-keyring-oracle"
stamp="$out/stamp"

force=0
for arg in "$@"; do
    case "$arg" in
    --force) force=1 ;;
    -h | --help)
        sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

die() {
    echo "oracle: $*" >&2
    exit 1
}

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 ||
    die "'go' not found in PATH: install Go >= 1.$MIN_GO_MINOR from https://go.dev/dl (or add /usr/local/go/bin to PATH)"
go_version="$(go env GOVERSION)"
if [[ ! "$go_version" =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < MIN_GO_MINOR)); then
    die "found $go_version, need Go >= 1.$MIN_GO_MINOR: install it from https://go.dev/dl"
fi

# The same environment as the control-plane build, so that compiled packages are shared.
export GOMODCACHE="$repo/.cache/go/mod"
export GOCACHE="$repo/.cache/go/build"
export GOTMPDIR="$repo/.cache/go/tmp"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
jobs="${ORACLE_BUILD_JOBS:-2}"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOTMPDIR" "$(dirname "$bin")"

want="$(
    cd "$here"
    {
        sha256sum build.sh main.go go.mod go.sum
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    } | sha256sum | cut -d' ' -f1
)"
if ((!force)) && [[ -x "$bin" && -f "$stamp" ]] && grep -qx "fingerprint $want" "$stamp"; then
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
