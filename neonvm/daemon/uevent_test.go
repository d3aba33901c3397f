package daemon

import "testing"

func TestParseUeventAndOnlineAction(t *testing.T) {
	cases := []struct {
		msg         string
		file, value string
		ok          bool
	}{
		{"add@/devices/system/cpu/cpu3\x00ACTION=add\x00DEVPATH=/devices/system/cpu/cpu3\x00SUBSYSTEM=cpu\x00SEQNUM=1\x00",
			"/sys/devices/system/cpu/cpu3/online", "1", true},
		{"add@/devices/system/memory/memory40\x00ACTION=add\x00DEVPATH=/devices/system/memory/memory40\x00SUBSYSTEM=memory\x00",
			"", "", false}, // the kernel onlines memory itself
		{"remove@/devices/system/cpu/cpu3\x00ACTION=remove\x00DEVPATH=/devices/system/cpu/cpu3\x00SUBSYSTEM=cpu\x00", "", "", false},
		{"add@/devices/pci0000:00/x\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/x\x00SUBSYSTEM=pci\x00", "", "", false},
	}
	for _, c := range cases {
		ev, err := ParseUevent([]byte(c.msg))
		if err != nil {
			t.Fatalf("ParseUevent(%q): %v", c.msg, err)
		}
		file, value, ok := OnlineAction(ev)
		if file != c.file || value != c.value || ok != c.ok {
			t.Errorf("OnlineAction(%q) = %q %q %v; want %q %q %v", c.msg, file, value, ok, c.file, c.value, c.ok)
		}
	}
	for _, bad := range []string{"", "libudev\x00\x00", "add@/x\x00SUBSYSTEM=cpu\x00"} {
		if _, err := ParseUevent([]byte(bad)); err == nil {
			t.Errorf("ParseUevent(%q) accepted", bad)
		}
	}
}

func TestIsPowerPress(t *testing.T) {
	if !IsPowerPress(inputEvent{Type: evKey, Code: keyPower, Value: 1}) {
		t.Fatal("power key down not recognised")
	}
	for _, e := range []inputEvent{{Type: evKey, Code: keyPower, Value: 0}, {Type: evKey, Code: 30, Value: 1}, {Type: 0, Code: keyPower, Value: 1}} {
		if IsPowerPress(e) {
			t.Errorf("%+v taken for a power press", e)
		}
	}
}
