package runner

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vmscale/vmscale/neonvm/qemu"
)

// ProbeKVM boots kernel under KVM with no root disk and reports whether it
// got as far as printing its banner within timeout. A /dev/kvm that exists
// is not proof: a paravirtual KVM (kvm_pvm) opens fine and then hangs a stock
// guest after the firmware.
func ProbeKVM(ctx context.Context, qemuPath, kernel string, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuPath, "-enable-kvm", "-machine", "q35", "-cpu", "host", "-m", "256",
		"-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 init=/nonexistent")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return false, "cannot start QEMU: " + err.Error()
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(out.String(), "Linux version") {
			_ = cmd.Process.Kill()
			<-done
			return true, "a guest kernel booted under KVM"
		}
		select {
		case <-done:
			return false, "QEMU with KVM exited: " + lastLine(out.String())
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			return false, "a guest kernel printed nothing under KVM within " + timeout.String()
		case <-tick.C:
		}
	}
}

// ChooseAccel resolves "auto" with ProbeKVM; "kvm" and "tcg" are taken as
// given.
func ChooseAccel(ctx context.Context, want, qemuPath, kernel string) (qemu.Accel, string) {
	switch want {
	case "kvm":
		return qemu.AccelKVM, "KVM requested"
	case "tcg":
		return qemu.AccelTCG, "TCG requested"
	}
	ok, why := ProbeKVM(ctx, qemuPath, kernel, 10*time.Second)
	if ok {
		return qemu.AccelKVM, why
	}
	return qemu.AccelTCG, why
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
