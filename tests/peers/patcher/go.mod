// Pinned build of titansoft-pte-ltd/imagepullsecret-patcher for the comparison
// (COMPARISON.md). Built by ../build.sh. Nothing of the patcher is committed here.
//
// v0.14 (2020-10-25, commit ddfa08a5c8d173e6129ccc2fb662430c0ed17df1) is its last release;
// the tag is not semver, so Go pins it by pseudo-version. ../build.sh tries this module
// first. The module proxy reachable where this file was written refuses it (403 "This
// module version is not available"), so go.sum is not committed yet; then ../build.sh
// builds the same tag from git instead (PATCHER_GIT), checked to be that commit, with the
// upstream's own go.mod and go.sum. The first time the proxy serves the module, ../build.sh
// records go.sum here with `go mod tidy` (checked against sum.golang.org): commit it.
module pullsecret-injector/tests/peers/patcher

go 1.26.0

tool github.com/titansoft-pte-ltd/imagepullsecret-patcher

require github.com/titansoft-pte-ltd/imagepullsecret-patcher v0.0.0-20201025143617-ddfa08a5c8d1
