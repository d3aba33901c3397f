package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The example config in docs/protocols.md#scheduler-plugin, byte for byte.
const neonExample = `{"watermark":0.9,"scoring":{"minUsageScore":0.5,"maxUsageScore":0,"scorePeak":0.8,"randomize":true},
 "schedulerName":"autoscale-scheduler","reconcileWorkers":16,"logSuccessiveFailuresThreshold":10,
 "startupEventHandlingTimeoutSeconds":15,"patchRetryWaitSeconds":1,"k8sCRUDTimeoutSeconds":1,
 "nodeMetricLabels":{},"ignoredNamespaces":[]}`

func TestParseNeonExample(t *testing.T) {
	c, err := Parse([]byte(neonExample))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	if c.Watermark != want.Watermark || c.Scoring != want.Scoring || c.ReconcileWorkers != 16 ||
		c.PermitAddr != ":10299" || c.MetricsAddr != ":9100" || c.SchedulerName != "autoscale-scheduler" {
		t.Fatalf("parsed %+v", c)
	}
}

// The deployment's config file parses.
func TestDeployedConfigParses(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "config", "scheduler", "autoscale-enforcer-config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(raw); err != nil {
		t.Fatal(err)
	}
}

func TestParseNamesTheBadKey(t *testing.T) {
	base := func() map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(neonExample), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	cases := []struct {
		name string
		mod  func(map[string]any)
		want string
	}{
		{"unknown key", func(m map[string]any) { m["watermarks"] = 0.5 }, `unknown field "watermarks"`},
		{"missing key", func(m map[string]any) { delete(m, "reconcileWorkers") }, "reconcileWorkers: required key missing"},
		{"watermark 0", func(m map[string]any) { m["watermark"] = 0 }, "watermark: must be in (0, 1]"},
		{"watermark 1.5", func(m map[string]any) { m["watermark"] = 1.5 }, "watermark: must be in (0, 1]"},
		{"score", func(m map[string]any) { m["scoring"].(map[string]any)["minUsageScore"] = 2 }, "scoring.minUsageScore"},
		{"peak", func(m map[string]any) { m["scoring"].(map[string]any)["scorePeak"] = 1 }, "scoring.scorePeak"},
		{"workers", func(m map[string]any) { m["reconcileWorkers"] = 0 }, "reconcileWorkers: must be > 0"},
		{"timeout", func(m map[string]any) { m["k8sCRUDTimeoutSeconds"] = -1 }, "k8sCRUDTimeoutSeconds: must be > 0"},
		{"type", func(m map[string]any) { m["watermark"] = "high" }, "watermark"},
		{"name", func(m map[string]any) { m["schedulerName"] = "" }, "schedulerName"},
	}
	for _, c := range cases {
		m := base()
		c.mod(m)
		raw, _ := json.Marshal(m)
		_, err := Parse(raw)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if _, err := Parse([]byte(`{`)); err == nil {
		t.Error("truncated JSON accepted")
	}
}
