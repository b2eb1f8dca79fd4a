# Shared by the build scripts of the pinned test tools (tests/*/build.sh, image/build.sh):
# sourced, never run. It holds what must be the same in all of them: one Go environment (so
# the Go module and build caches under .cache/go are shared and compiled packages are
# reused), one way to skip a build whose stamp matches, and one way to fetch a pinned Debian
# package without installing it.
#
# A script sets `build_name` (its prefix in messages) before sourcing this file.

# shellcheck shell=bash

die() {
    echo "${build_name:-build}: $*" >&2
    exit 1
}

# parse_build_args <last line of the header comment> "$@": sets `force` from --force and
# prints the script's header comment for --help.
parse_build_args() {
    local help_end="$1"
    shift
    force=0
    for arg in "$@"; do
        case "$arg" in
        --force) force=1 ;;
        -h | --help)
            sed -n "2,${help_end}p" "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "$0: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
        esac
    done
}

# require_go <minimum version, e.g. 1.26 or 1.26.8>: finds go (also in the official
# tarball's default place) and sets `go_version` (e.g. go1.26.8).
require_go() {
    local minimum="$1" newest
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        PATH="/usr/local/go/bin:$PATH"
    fi
    command -v go >/dev/null 2>&1 ||
        die "'go' not found in PATH: install Go >= $minimum from https://go.dev/dl (or add /usr/local/go/bin to PATH)"
    go_version="$(go env GOVERSION)"
    newest="$(printf '%s\n%s\n' "${go_version#go}" "$minimum" | sort -V | tail -n1)"
    [[ "$newest" == "${go_version#go}" ]] || die "found $go_version, need Go >= $minimum: install it from https://go.dev/dl"
}

# go_environment <repo>: the environment every Go build of the tests uses. GOFLAGS and
# GOTOOLCHAIN from the user's environment are overridden: a build must use exactly what
# go.mod/go.sum pin and never rewrite them; -modcacherw lets `rm -rf .cache` work.
go_environment() {
    export GOMODCACHE="$1/.cache/go/mod"
    export GOCACHE="$1/.cache/go/build"
    export GOTMPDIR="$1/.cache/go/tmp"
    export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
    export GOTOOLCHAIN=local
    export CGO_ENABLED=0
    mkdir -p "$GOMODCACHE" "$GOCACHE" "$GOTMPDIR"
}

# build_lib_digest: what this file contributes to a script's fingerprint.
build_lib_digest() {
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}

# up_to_date <stamp> <fingerprint> <output>...: true when --force was not given, the stamp
# records this fingerprint and every output exists.
up_to_date() {
    local stamp="$1" fingerprint="$2" output
    shift 2
    ((!force)) || return 1
    for output in "$@"; do
        [[ -e "$output" ]] || return 1
    done
    [[ -f "$stamp" ]] && grep -qx "fingerprint $fingerprint" "$stamp"
}

# deb_file <cache dir> <name=version>: the cached .deb of a pinned Debian package,
# downloaded with `apt-get download` (which checks it against the signed archive) if
# missing. apt's package lists may be missing or stale on a fresh machine: then one
# `apt-get update` (as root) and a second try. The download goes to a directory of its own
# and is moved, so a concurrent build never sees half a file.
deb_file() {
    local debs="$1" pin="$2" name version arch file download
    name="${pin%%=*}"
    version="${pin#*=}"
    mkdir -p "$debs"
    for arch in "$(dpkg --print-architecture)" all; do
        file="$debs/${name}_${version//:/%3a}_$arch.deb"
        [[ -f "$file" ]] && echo "$file" && return
    done
    download="$(mktemp -d "$debs/download.XXXXXX")"
    if ! (cd "$download" && apt-get download -q "$pin" >&2); then
        ((EUID == 0)) || die "apt-get download $pin failed; run 'apt-get update' as root and try again"
        apt-get update -q >&2
        (cd "$download" && apt-get download -q "$pin" >&2) ||
            die "apt-get download $pin failed: Debian no longer serves this version? 'apt-cache policy $name' shows what it serves; update the pin in $0"
    fi
    mv "$download"/*.deb "$debs/"
    rmdir "$download"
    for arch in "$(dpkg --print-architecture)" all; do
        file="$debs/${name}_${version//:/%3a}_$arch.deb"
        [[ -f "$file" ]] && echo "$file" && return
    done
    die "apt-get download $pin wrote no .deb into $debs"
}
