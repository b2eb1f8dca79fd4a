// Pinned build of titansoft-pte-ltd/imagepullsecret-patcher for the comparison
// (COMPARISON.md). Built by ../run.sh. Nothing of the patcher is committed here.
//
// v0.14 (2020-10-25, commit ddfa08a5c8d1) is its last release; the tag is not semver, so
// Go pins it by pseudo-version. go.sum is not committed yet: the module proxy reachable
// where this file was written refuses this module (403 "This module version is not
// available"), so its sums could not be recorded. run.sh records them with `go mod tidy`
// (checked against sum.golang.org) the first time the proxy serves the module; commit the
// resulting go.mod and go.sum.
module pullsecret-injector/tests/peers/patcher

go 1.26.0

tool github.com/titansoft-pte-ltd/imagepullsecret-patcher

require github.com/titansoft-pte-ltd/imagepullsecret-patcher v0.0.0-20201025143617-ddfa08a5c8d1
