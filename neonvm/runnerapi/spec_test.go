package runnerapi

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

func TestSpecEncodingRoundTrip(t *testing.T) {
	spec := vmv1.VirtualMachineSpec{Guest: vmv1.Guest{
		CPUs: vmv1.CPUs{Min: 250, Max: 2000, Use: 1500}, MemorySlotSize: resource.MustParse("256Mi"),
		MemorySlots: vmv1.MemorySlots{Min: 2, Max: 8, Use: 4}, RootDisk: vmv1.RootDisk{Image: "x"},
	}}
	enc, err := EncodeSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	var back vmv1.VirtualMachineSpec
	// The runner's flag value may carry a trailing newline (a shell).
	if err := DecodeSpec(enc+"\n", &back); err != nil {
		t.Fatal(err)
	}
	if back.Guest.CPUs != spec.Guest.CPUs || back.Guest.MemorySlots != spec.Guest.MemorySlots ||
		!back.Guest.MemorySlotSize.Equal(spec.Guest.MemorySlotSize) || back.Guest.RootDisk.Image != "x" {
		t.Fatalf("round trip changed the spec: %+v", back.Guest)
	}
	for _, bad := range []string{"%%", "aGVsbG8=", ""} {
		if err := DecodeSpec(bad, &back); err == nil {
			t.Errorf("DecodeSpec(%q) accepted", bad)
		}
	}
}

func TestStatusEncodingRoundTrip(t *testing.T) {
	cpus := vmv1.MilliCPU(1500)
	mem := resource.MustParse("1Gi")
	st := vmv1.VirtualMachineStatus{PodIP: "10.0.0.5", CPUs: &cpus, MemorySize: &mem, ExtraNetIP: "10.100.0.7", ExtraNetMask: "255.255.0.0"}
	enc, err := EncodeSpec(st)
	if err != nil {
		t.Fatal(err)
	}
	var back vmv1.VirtualMachineStatus
	if err := DecodeSpec(enc, &back); err != nil {
		t.Fatal(err)
	}
	if back.PodIP != st.PodIP || back.CPUs == nil || *back.CPUs != cpus || back.MemorySize == nil ||
		!back.MemorySize.Equal(mem) || back.ExtraNetIP != st.ExtraNetIP || back.ExtraNetMask != st.ExtraNetMask {
		t.Fatalf("round trip changed the status: %+v", back)
	}
}

func TestBaseURL(t *testing.T) {
	for _, c := range []struct {
		ip   string
		port int32
		want string
	}{
		{"10.0.0.5", 0, "http://10.0.0.5:25183"},
		{"10.0.0.5", 8080, "http://10.0.0.5:8080"},
		{"fd00::5", 0, "http://[fd00::5]:25183"},
	} {
		if got := BaseURL(c.ip, c.port); got != c.want {
			t.Errorf("BaseURL(%q, %d) = %q; want %q", c.ip, c.port, got, c.want)
		}
	}
}
