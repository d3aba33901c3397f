package netattach

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseNetworks(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  []Network
		err   string
	}{
		{value: "", want: nil},
		{value: "neonvm-system/neonvm-overlay-net@net1",
			want: []Network{{"neonvm-system", "neonvm-overlay-net", "net1"}}},
		{value: "overlay", want: []Network{{"pods", "overlay", "net1"}}},
		{value: "a/x@eth1, y ,b/z",
			want: []Network{{"a", "x", "eth1"}, {"pods", "y", "net2"}, {"b", "z", "net3"}}},
		{value: `[{"name":"neonvm-overlay-net","namespace":"neonvm-system","interface":"net1","ips":["10.0.0.1/16"]}]`,
			want: []Network{{"neonvm-system", "neonvm-overlay-net", "net1"}}},
		{value: ` [{"name":"x"},{"name":"y","interface":"ovl"}]`,
			want: []Network{{"pods", "x", "net1"}, {"pods", "y", "ovl"}}},
		{value: "x@", err: "empty interface"},
		{value: "a/@net1", err: "no valid name"},
		{value: "a/b/c", err: "no valid name"},
		{value: "x@net1,y@net1", err: "used twice"},
		{value: "x@eth0", err: "used twice"},
		{value: "x@averyveryverylongname", err: "not a valid interface"},
		{value: `[{"name":`, err: "not a JSON list"},
		{value: `[{"namespace":"a"}]`, err: "no valid name"},
	} {
		got, err := ParseNetworks(tc.value, "pods")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), NetworksAnnotation) {
				t.Errorf("ParseNetworks(%q) = %v, %v; want an error naming the annotation, with %q", tc.value, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseNetworks(%q) = %+v, %v; want %+v", tc.value, got, err, tc.want)
		}
	}
}

func FuzzParseNetworks(f *testing.F) {
	for _, s := range []string{"a/b@net1", `[{"name":"x"}]`, "x,y", "@", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		nets, err := ParseNetworks(value, "ns")
		if err != nil {
			return
		}
		for _, n := range nets {
			if n.Name == "" || n.Namespace == "" || n.Interface == "" || len(n.Interface) > 15 {
				t.Fatalf("ParseNetworks(%q) gave %+v", value, n)
			}
		}
	})
}

func TestParseK8sArgs(t *testing.T) {
	ns, name, ok, err := ParseK8sArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=pg-abcde;K8S_POD_INFRA_CONTAINER_ID=123;K8S_POD_UID=u")
	if err != nil || !ok || ns != "demo" || name != "pg-abcde" {
		t.Errorf("got %q %q %v %v", ns, name, ok, err)
	}
	if _, _, ok, err := ParseK8sArgs(""); ok || err != nil {
		t.Errorf("empty CNI_ARGS: ok %v err %v", ok, err)
	}
}

func TestHostInterface(t *testing.T) {
	a, b := HostInterface("c1", "net1"), HostInterface("c1", "net2")
	if a == b || len(a) > 15 || a != HostInterface("c1", "net1") {
		t.Errorf("host names %q %q", a, b)
	}
}
