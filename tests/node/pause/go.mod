// The sandbox ("pause") program of the test node: the first process of every pod, holding
// its namespaces. Built by ../build.sh into the sandbox image that containerd pins, because
// registry.k8s.io cannot be reached from the tests. Standard library only.
module pullsecret-injector/tests/node/pause

go 1.26.0
