// sleeper waits until it is told to stop: the entrypoint of the test images and the node's
// sandbox ("pause") process. Its arguments, if any, are printed as one line first, so a pod's
// log shows which image it runs. SIGTERM and SIGINT end it with status 0 at once (a pod is
// deleted without waiting out its grace period); as PID 1 of a sandbox it reaps the orphans
// that the pod's PID namespace hands it, like Kubernetes' pause.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	if len(os.Args) > 1 {
		fmt.Println(strings.Join(os.Args[1:], " "))
	}
	for s := range signals {
		if s == syscall.SIGCHLD {
			reapOrphans()
			continue
		}
		os.Exit(0)
	}
}

// reapOrphans collects every child that has exited; signals coalesce, so one SIGCHLD may
// stand for several.
func reapOrphans() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
