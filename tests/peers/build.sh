#!/usr/bin/env bash
# Builds the peers of the comparison (COMPARISON.md) from pinned sources; none of their
# code is committed (sources and builds live in the gitignored .cache/).
#
#   kyverno:  github.com/kyverno/kyverno cmd/kyverno (admission controller) and
#             cmd/background-controller (runs generate rules), plus its CRDs
#             (config/crds of the same module version), pinned by
#             tests/peers/kyverno/go.{mod,sum}
#   patcher:  github.com/titansoft-pte-ltd/imagepullsecret-patcher v0.14, commit
#             ddfa08a5c8d1: the module pinned by tests/peers/patcher/go.mod when the
#             module proxy serves it; otherwise tag v0.14 from git ($PATCHER_GIT),
#             checked to be that commit, built with its own go.mod and go.sum
#
# Output:  <repo>/.cache/peers/bin/{kyverno,background-controller,imagepullsecret-patcher}
#          <repo>/.cache/peers/kyverno-crds/*.yaml
#          <repo>/.cache/peers/<peer>.stamp (versions) or <peer>.unavailable (why not)
# Caches:  <repo>/.cache/go/{mod,build} (shared with tests/controlplane/build.sh)
#
# A peer is skipped when its stamp matches the pinned modules. A peer that cannot be
# built is reported and written to <peer>.unavailable; the other is still built.
# Options / environment:
#   --force                rebuild even if the stamps match
#   PEERS_BUILD_JOBS=N     go build -p N (default 2), always under `nice -n 19`
#   PATCHER_GIT=URL|DIR    where to fetch the patcher's tag from (default: its public
#                          GitHub repository; a clone or mirror directory works too, for a
#                          machine without access to GitHub)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_name=peers
# shellcheck source=../build-lib.sh
source "$here/../build-lib.sh"
parse_build_args 26 "$@"
require_go 1.26.6
go_environment "$repo"
out="$repo/.cache/peers"
bin="$out/bin"

jobs="${PEERS_BUILD_JOBS:-2}"
mkdir -p "$bin"

fingerprint() { # fingerprint <peer dir>; also hashes $pin_<peer dir> (a pin outside go.mod)
    local pin="pin_$1"
    (
        cd "$here/$1"
        sha256sum go.mod
        [[ -f go.sum ]] && sha256sum go.sum
        echo "recipe 2 $go_version $(go env GOOS)/$(go env GOARCH)"
        [[ -z "${!pin:-}" ]] || echo "pin ${!pin}"
    ) | sha256sum | cut -d' ' -f1
}

peer_up_to_date() { # peer_up_to_date <peer> <binaries...>
    local peer="$1"
    shift
    up_to_date "$out/$peer.stamp" "$(fingerprint "$peer")" "${@/#/$bin/}"
}

module_version() { # module_version <peer dir> <module path>
    (cd "$here/$1" && go list -m -f '{{.Version}}' "$2")
}

gobuild() { # gobuild <peer dir> <ldflags> <packages...>
    local dir="$1" ldflags="$2"
    shift 2
    echo "peers: building $* (nice -n 19 go build -p $jobs)"
    (cd "$here/$dir" && nice -n 19 go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$bin/" "$@")
}

# --- Kyverno -----------------------------------------------------------------------------
build_kyverno() {
    local module=github.com/kyverno/kyverno version start=$SECONDS
    if peer_up_to_date kyverno kyverno background-controller; then
        echo "peers: kyverno up to date ($(sed -n 's/^version //p' "$out/kyverno.stamp"))"
        return 0
    fi
    rm -f "$out/kyverno.stamp" "$out/kyverno.unavailable"
    version="$(module_version kyverno "$module")"
    # As Kyverno's Makefile does for a release build.
    gobuild kyverno "-s -w -X $module/pkg/version.BuildVersion=$version" \
        "$module/cmd/kyverno" "$module/cmd/background-controller"
    # CRDs of the same module version, from the module cache.
    local dir
    dir="$(cd "$here/kyverno" && go list -m -f '{{.Dir}}' "$module")"
    rm -rf "$out/kyverno-crds"
    mkdir -p "$out/kyverno-crds"
    find "$dir/config/crds" -name '*.yaml' -exec cp {} "$out/kyverno-crds/" \;
    chmod u+w "$out/kyverno-crds"/*.yaml
    # Its ConfigMaps and the two Deployments' container args, as the module's Helm chart
    # renders them by default: benches/peers.rs runs the binaries with those args. The
    # chart's remote dependencies (CRD and reports sub-charts, not in the module) are
    # dropped from a scratch copy of Chart.yaml; nothing rendered here comes from them.
    local helm="$repo/.cache/controlplane/bin/helm" chart
    [[ -x "$helm" ]] || { echo "peers: $helm missing: run 'make controlplane' first" >&2; exit 1; }
    chart="$(mktemp -d)"
    cp -r "$dir/charts/kyverno" "$chart/"
    chmod -R u+w "$chart"
    sed -i '/^dependencies:/,$d' "$chart/kyverno/Chart.yaml"
    rm -f "$chart/kyverno/Chart.lock"
    "$helm" template kyverno "$chart/kyverno" --namespace kyverno \
        --show-only templates/config/configmap.yaml \
        --show-only templates/config/metricsconfigmap.yaml \
        --show-only templates/admission-controller/deployment.yaml \
        --show-only templates/background-controller/deployment.yaml \
        >"$out/kyverno-chart.yaml"
    rm -rf "$chart"
    {
        echo "fingerprint $(fingerprint kyverno)"
        echo "version $version"
        echo "go $go_version"
        echo "seconds $((SECONDS - start))"
    } >"$out/kyverno.stamp"
    echo "peers: kyverno $version built in $((SECONDS - start))s ($(ls "$out/kyverno-crds" | wc -l) CRDs)"
}

# --- imagepullsecret-patcher -------------------------------------------------------------
# Its last release, v0.14, pinned by commit. The tag is not semver, so Go names it by the
# pseudo-version in patcher/go.mod; the module proxy used so far refuses that module (403
# "This module version is not available"), so when it does the same tag is built from git
# instead, with the upstream's own go.mod and go.sum (their dependencies still come through
# the module proxy, checked against that go.sum).
patcher_tag=v0.14
patcher_commit=ddfa08a5c8d173e6129ccc2fb662430c0ed17df1
pin_patcher="$patcher_tag $patcher_commit"
PATCHER_GIT="${PATCHER_GIT:-https://github.com/titansoft-pte-ltd/imagepullsecret-patcher.git}"

# The pinned module through the module proxy; fails (with the go command's output on
# stderr) when the proxy does not serve it.
patcher_from_module() {
    local module=github.com/titansoft-pte-ltd/imagepullsecret-patcher
    # go.sum is recorded (and checked against sum.golang.org) the first time the module
    # proxy serves the module: see the comment in patcher/go.mod.
    if [[ ! -s "$here/patcher/go.sum" ]]; then
        echo "peers: patcher: recording go.sum (go mod tidy); commit tests/peers/patcher/go.{mod,sum}"
        (cd "$here/patcher" && GOFLAGS="-mod=mod -modcacherw" go mod tidy) || return 1
    fi
    gobuild patcher "-s -w" "$module"
}

# Tag $patcher_tag of $PATCHER_GIT, checked to be $patcher_commit, exported into a scratch
# directory under .cache (never into the repository) and built there.
patcher_from_git() (
    scratch="$(mktemp -d "$GOTMPDIR/patcher-src.XXXXXX")"
    # shellcheck disable=SC2064 # expand now
    trap "rm -rf '$scratch'" EXIT
    echo "peers: patcher: fetching tag $patcher_tag from $PATCHER_GIT"
    git init --quiet --bare "$scratch/git" &&
        git -C "$scratch/git" fetch --quiet --no-tags --depth 1 "$PATCHER_GIT" \
            "+refs/tags/$patcher_tag:refs/tags/$patcher_tag" || return 1
    commit="$(git -C "$scratch/git" rev-parse "refs/tags/$patcher_tag^{commit}")" || return 1
    if [[ "$commit" != "$patcher_commit" ]]; then
        echo "tag $patcher_tag of $PATCHER_GIT is commit $commit, not the pinned $patcher_commit" >&2
        return 1
    fi
    mkdir "$scratch/src"
    git -C "$scratch/git" archive "$commit" | tar -x -C "$scratch/src" || return 1
    echo "peers: building imagepullsecret-patcher $patcher_tag (nice -n 19 go build -p $jobs)"
    (cd "$scratch/src" && nice -n 19 go build -p "$jobs" -trimpath -ldflags "-s -w" \
        -o "$bin/imagepullsecret-patcher" .)
)

build_patcher() {
    local start=$SECONDS version err source
    if peer_up_to_date patcher imagepullsecret-patcher; then
        echo "peers: patcher up to date ($(sed -n 's/^version //p' "$out/patcher.stamp"))"
        return 0
    fi
    rm -f "$out/patcher.stamp" "$out/patcher.unavailable" "$bin/imagepullsecret-patcher"
    version="$patcher_tag (commit $patcher_commit)"
    if err="$(patcher_from_module 2>&1)"; then
        source="module proxy: $(sed -n 's|^require ||p' "$here/patcher/go.mod")"
    else
        echo "peers: patcher: not from the module proxy ($(grep -m1 -E 'server response|[0-9]{3} [A-Z]' <<<"$err" | sed 's/^[[:space:]]*//' || :))"
        echo "peers: patcher: building tag $patcher_tag from git instead"
        if ! err="$err"$'\n'"$(patcher_from_git 2>&1)"; then
            printf 'imagepullsecret-patcher %s could not be built, neither from the module proxy nor from %s:\n%s\n' \
                "$patcher_tag" "$PATCHER_GIT" "$err" | tee "$out/patcher.unavailable" >&2
            echo "peers: patcher NOT built (see $out/patcher.unavailable); continuing" >&2
            return 0
        fi
        source="git: $PATCHER_GIT tag $patcher_tag"
    fi
    {
        echo "fingerprint $(fingerprint patcher)"
        echo "version $version"
        echo "source $source"
        echo "go $go_version"
        echo "seconds $((SECONDS - start))"
    } >"$out/patcher.stamp"
    echo "peers: patcher $patcher_tag built in $((SECONDS - start))s ($source)"
}

build_patcher
build_kyverno
