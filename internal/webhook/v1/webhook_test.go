package v1

import (
	"encoding/json"
	"testing"
)

func TestParentExists(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal([]byte(`{"spec":{"guest":{"ports":[{"port":1}],"rootDisk":{}},"n":1}}`), &doc); err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"/spec/cpuScalingMode":                 true,
		"/spec/guest/rootDisk/imagePullPolicy": true,
		"/spec/guest/ports/0/protocol":         true,
		"/spec/guest/ports/1/protocol":         false,
		"/spec/guest/ports/x/protocol":         false,
		"/spec/guest/cpus/min":                 false,
		"/spec/n/x":                            false,
		"/status/phase":                        false,
	}
	for path, want := range cases {
		if got := parentExists(doc, path); got != want {
			t.Errorf("parentExists(%s) = %v; want %v", path, got, want)
		}
	}
}

func TestParseSkipList(t *testing.T) {
	got, err := ParseSkipList(" default/a, kube-system/b ,")
	if err != nil || len(got) != 2 {
		t.Fatalf("ParseSkipList = %v, %v", got, err)
	}
	for _, bad := range []string{"a", "/a", "a/", "a/b/c"} {
		if _, err := ParseSkipList(bad); err == nil {
			t.Errorf("ParseSkipList(%q) accepted", bad)
		}
	}
}
