#!/usr/bin/env bash
# Installs the pinned tools of the registry and image tests and of `make image`:
#   registry  the distribution registry 2.8.2 (Debian's docker-registry package)
#   runc      Debian's runc, to run an image's rootfs in the image tests
#   crane     github.com/google/go-containerregistry/cmd/crane, pinned in crane/go.{mod,sum}
#   sleeper   sleeper/main.go, the entrypoint of the test images and the node's pause image
#
# Output:  <repo>/.cache/registry/bin/{registry,runc,crane,sleeper}
# Caches:  <repo>/.cache/registry/debs (the .deb files), <repo>/.cache/go/{mod,build}
#
# Debian packages are fetched with `apt-get download NAME=VERSION` (verified by apt against
# the signed archive) and unpacked with `dpkg-deb -x`: nothing is installed on the system.
# The build is skipped when the stamp matches the pins and every output exists.
#   --force   rebuild even if the stamp matches
set -euo pipefail

MIN_GO_MINOR=26 # go.mod files say "go 1.26.0"
# Debian 12 (bookworm) packages: name=version.
DEBS=(
    docker-registry=2.8.2+ds1-1
    runc=1.1.5+ds1-1+deb12u1
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/.cache/registry"
bin="$out/bin"
debs="$out/debs"
stamp="$out/stamp"
outputs=(registry runc crane sleeper)

force=0
for arg in "$@"; do
    case "$arg" in
    --force) force=1 ;;
    -h | --help)
        sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

die() {
    echo "registry tools: $*" >&2
    exit 1
}

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 ||
    die "'go' not found in PATH: install Go >= 1.$MIN_GO_MINOR from https://go.dev/dl"
go_version="$(go env GOVERSION)"
if [[ ! "$go_version" =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < MIN_GO_MINOR)); then
    die "found $go_version, need Go >= 1.$MIN_GO_MINOR: install it from https://go.dev/dl"
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: the registry and runc come from Debian 12 packages"
done

export GOMODCACHE="$repo/.cache/go/mod"
export GOCACHE="$repo/.cache/go/build"
export GOTMPDIR="$repo/.cache/go/tmp"
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOTMPDIR" "$bin" "$debs"

fingerprint() {
    (
        cd "$here"
        sha256sum build.sh crane/go.mod crane/go.sum sleeper/go.mod sleeper/main.go
        printf '%s\n' "${DEBS[@]}"
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    ) | sha256sum | cut -d' ' -f1
}

want="$(fingerprint)"
all_present=1
for b in "${outputs[@]}"; do
    [[ -x "$bin/$b" ]] || all_present=0
done
if ((!force && all_present)) && [[ -f "$stamp" ]] && grep -qx "fingerprint $want" "$stamp"; then
    echo "registry tools: up to date ($stamp)"
    exit 0
fi
rm -f "$stamp"
start=$SECONDS

# deb_file <name=version>: the cached .deb, downloaded if missing. apt's package lists may
# be missing or stale on a fresh machine: one `apt-get update` (as root) and a second try.
deb_file() {
    local pin="$1" name version file
    name="${pin%%=*}"
    version="${pin#*=}"
    file="$debs/${name}_${version//:/%3a}_$(dpkg --print-architecture).deb"
    if [[ ! -f "$file" ]]; then
        if ! (cd "$debs" && apt-get download -q "$pin" >&2); then
            ((EUID == 0)) || die "apt-get download $pin failed; run 'apt-get update' as root and try again"
            apt-get update -q >&2
            (cd "$debs" && apt-get download -q "$pin" >&2) ||
                die "apt-get download $pin failed: Debian no longer serves this version? 'apt-cache policy $name' shows what it serves; update the pin in ${BASH_SOURCE[0]}"
        fi
    fi
    [[ -f "$file" ]] || die "apt-get download $pin did not write $file"
    echo "$file"
}

# install_from_deb <name=version> <path inside the package> <output name>
install_from_deb() {
    local file unpacked
    file="$(deb_file "$1")"
    unpacked="$(mktemp -d "$out/unpack.XXXXXX")"
    dpkg-deb -x "$file" "$unpacked"
    [[ -x "$unpacked/$2" ]] || die "$file has no executable $2"
    install -m 0755 "$unpacked/$2" "$bin/$3"
    rm -rf "$unpacked"
    echo "registry tools: $3 from $(basename "$file")"
}

install_from_deb "${DEBS[0]}" usr/bin/docker-registry registry
install_from_deb "${DEBS[1]}" usr/sbin/runc runc

echo "registry tools: building crane and sleeper"
(cd "$here/crane" && go build -p 2 -trimpath -ldflags "-s -w" -o "$bin/crane" github.com/google/go-containerregistry/cmd/crane)
(cd "$here/sleeper" && go build -trimpath -ldflags "-s -w" -o "$bin/sleeper" .)

crane_version="$(cd "$here/crane" && go list -m -f '{{.Version}}' github.com/google/go-containerregistry)"
{
    echo "fingerprint $want"
    echo "go $go_version"
    printf 'deb %s\n' "${DEBS[@]}"
    echo "crane $crane_version"
} >"$stamp"
echo "registry tools: built in $((SECONDS - start))s"
"$bin/registry" --version
"$bin/runc" --version | head -n1
echo "crane $("$bin/crane" version 2>/dev/null || echo "$crane_version")"
