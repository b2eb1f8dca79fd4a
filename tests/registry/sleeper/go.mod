// The test images' entrypoint and the node's sandbox (pause) process. Built by ../build.sh.
module pullsecret-injector/tests/registry/sleeper

go 1.26.0
