// Command autoscale-scheduler is the upstream kube-scheduler with vmscale's
// AutoscaleEnforcer plugin compiled in; enable it with a profile such as
// config/scheduler/scheduler-config.yaml.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/vmscale/vmscale/pkg/plugin"
)

func main() {
	cmd := app.NewSchedulerCommand(app.WithPlugin(plugin.Name, plugin.New))
	os.Exit(cli.Run(cmd))
}
