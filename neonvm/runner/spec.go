// Package runner is neonvm-runner: it turns a VirtualMachine spec into a
// running QEMU (disks prepared, KVM chosen by a real probe, the command line
// from neonvm/qemu), serves the runner HTTP API, and powers the guest off
// over QMP on SIGTERM.
package runner

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// CheckHost rejects a spec this host cannot run, naming the field: guest
// memory past the host's, or more vCPUs than QEMU may create.
func CheckHost(spec *vmv1.VirtualMachineSpec, hostMemBytes int64) error {
	g := spec.Guest
	if errs := vmv1.ValidateVirtualMachine(&vmv1.VirtualMachine{Spec: *spec}); len(errs) > 0 {
		return errs.ToAggregate()
	}
	maxMem := g.MemorySlotSize.Value() * int64(g.MemorySlots.Max)
	if hostMemBytes > 0 && maxMem > hostMemBytes {
		return fmt.Errorf("spec.guest.memorySlots.max: %d slots of %s (%s) exceed this host's memory (%s)",
			g.MemorySlots.Max, g.MemorySlotSize.String(),
			resource.NewQuantity(maxMem, resource.BinarySI).String(),
			resource.NewQuantity(hostMemBytes, resource.BinarySI).String())
	}
	if g.CPUs.Max.RoundedUp() > 288 {
		return fmt.Errorf("spec.guest.cpus.max: %s vCPUs are more than QEMU's q35 machine takes (288)", g.CPUs.Max)
	}
	return nil
}

// HostMemory reads MemTotal from /proc/meminfo.
func HostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("MemTotal in /proc/meminfo: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no MemTotal in /proc/meminfo")
}
