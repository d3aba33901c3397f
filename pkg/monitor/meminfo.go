package monitor

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmscale/vmscale/pkg/guestmetrics"
)

// MemTotalFrom reads the guest's MemTotal from a /proc (or a folder laid
// out like one).
func MemTotalFrom(proc string) func() (uint64, error) {
	return func() (uint64, error) {
		f, err := os.Open(filepath.Join(proc, "meminfo"))
		if err != nil {
			return 0, fmt.Errorf("read MemTotal: %w", err)
		}
		defer f.Close()
		total, _, _, err := guestmetrics.ParseMeminfo(f)
		if err != nil {
			return 0, fmt.Errorf("read MemTotal: %w", err)
		}
		return uint64(total), nil
	}
}
