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

# Debian 12 (bookworm) packages: name=version.
DEBS=(
    docker-registry=2.8.2+ds1-1
    runc=1.1.5+ds1-1+deb12u1
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_name="registry tools"
# shellcheck source=../build-lib.sh
source "$here/../build-lib.sh"
parse_build_args 15 "$@"
require_go 1.26 # go.mod files say "go 1.26.0"
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: the registry and runc come from Debian 12 packages"
done
go_environment "$repo"

out="$repo/.cache/registry"
bin="$out/bin"
debs="$out/debs"
stamp="$out/stamp"
outputs=(registry runc crane sleeper)

mkdir -p "$bin" "$debs"

fingerprint() {
    (
        cd "$here"
        sha256sum build.sh crane/go.mod crane/go.sum sleeper/go.mod sleeper/main.go
        printf '%s\n' "${DEBS[@]}"
        build_lib_digest
        echo "$go_version $(go env GOOS)/$(go env GOARCH)"
    ) | sha256sum | cut -d' ' -f1
}

want="$(fingerprint)"
if up_to_date "$stamp" "$want" "${outputs[@]/#/$bin/}"; then
    echo "registry tools: up to date ($stamp)"
    exit 0
fi
rm -f "$stamp"
start=$SECONDS

# install_from_deb <name=version> <path inside the package> <output name>
install_from_deb() {
    local file unpacked
    file="$(deb_file "$debs" "$1")"
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
