package agent

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmscale/vmscale/pkg/agent/core"
	"github.com/vmscale/vmscale/pkg/api"
)

// shippedConfig is config/agent/config.json, the DaemonSet's configuration.
func shippedConfig(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../config/agent/config.json")
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestShippedConfigIsTheSpecDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(shippedConfig(t)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.DefaultScaling(), api.DefaultScalingConfig()) {
		t.Fatalf("scaling defaults %+v", c.DefaultScaling())
	}
	want := core.DefaultConfig(api.Resources{VCPU: 250, Mem: 1 << 30})
	if got := c.Core(); got != want {
		t.Fatalf("core config\n got %+v\nwant %+v", got, want)
	}
	if mc := c.MonitorClient(); mc.ConnectTimeout != 4*time.Second || mc.MaxHealthCheckFails != 30*time.Second || mc.HealthCheckEvery != 5*time.Second {
		t.Fatalf("monitor client %+v", mc)
	}
	if c.refreshInterval() != 5 || c.Scheduler.RequestPort != 10299 || c.Monitor.ServerPort != 10301 || c.DumpState.Port != 10300 {
		t.Fatalf("ports/intervals %+v", c)
	}
}

// TestBadConfigsNameTheKey: every refusal says which key is wrong.
func TestBadConfigsNameTheKey(t *testing.T) {
	good := shippedConfig(t)
	for name, tc := range map[string]struct{ from, to, key string }{
		"unknown key":        {`"refereshStateIntervalSeconds": 5,`, `"refereshStateIntervalSeconds": 5, "bogus": 1,`, `unknown field "bogus"`},
		"unknown nested key": {`"serverPort": 10301,`, `"serverPort": 10301, "port": 1,`, `unknown field "port"`},
		"zero timeout":       {`"responseTimeoutSeconds": 5`, `"responseTimeoutSeconds": 0`, "monitor.responseTimeoutSeconds"},
		"missing default":    {`"cpuMixedZoneRatio": 0`, `"cpuStableZoneRatio": 0`, "scaling.defaultConfig.cpuMixedZoneRatio is required"},
		"bad fraction":       {`"memoryUsageFractionTarget": 0.75`, `"memoryUsageFractionTarget": 1.5`, "memoryUsageFractionTarget must be set to value < 1"},
		"zero compute unit":  {`{ "vCPUs": 0.25, "mem": "1Gi" }`, `{ "vCPUs": 0, "mem": "1Gi" }`, "scaling.computeUnit"},
		"no scheduler name":  {`"schedulerName": "autoscale-scheduler"`, `"schedulerName": ""`, "scheduler.schedulerName is required"},
		"wrong type":         {`"requestPort": 10299`, `"requestPort": "10299"`, "requestPort"},
		"no refresh":         {`"refereshStateIntervalSeconds": 5,`, ``, "refereshStateIntervalSeconds is required"},
		"trailing data":      {`"dumpState": { "port": 10300, "timeoutSeconds": 5 }`, `"dumpState": { "port": 10300, "timeoutSeconds": 5 }}{`, "trailing"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := strings.Replace(good, tc.from, tc.to, 1)
			if bad == good {
				t.Fatalf("replacement %q did not apply", tc.from)
			}
			_, err := ParseConfig([]byte(bad))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err %v, want one naming %q", err, tc.key)
			}
		})
	}
	// The correct spelling is accepted too.
	fixed := strings.Replace(good, "refereshStateIntervalSeconds", "refreshStateIntervalSeconds", 1)
	if _, err := ParseConfig([]byte(fixed)); err != nil {
		t.Fatalf("correct spelling refused: %v", err)
	}
}

func TestLoadConfigNamesTheFile(t *testing.T) {
	_, err := LoadConfig("/nonexistent/config.json")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/config.json") {
		t.Fatalf("err %v", err)
	}
}
