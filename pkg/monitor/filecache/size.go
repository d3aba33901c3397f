// Package filecache is how much of the VM's memory the vm-monitor gives
// Postgres's cache: Neon's sizing formula, a pure function. Package
// filecache/postgres applies the size to a running Postgres.
package filecache

import (
	"errors"
	"fmt"
	"math"
)

// MiB is the unit the cache is sized in.
const MiB = 1 << 20

// Config is the sizing formula's parameters.
type Config struct {
	// ResourceMultiplier caps the cache at this fraction of the memory.
	ResourceMultiplier float64
	// MinRemainingAfterCache is memory the cache never takes (bytes).
	MinRemainingAfterCache uint64
	// SpreadFactor leaves room for the cache's own growth: of what remains
	// after MinRemainingAfterCache, the cache gets 1/(1+SpreadFactor).
	SpreadFactor float64
}

// DefaultConfig is Neon's: 0.75, 256 MiB, 0.1.
func DefaultConfig() Config {
	return Config{ResourceMultiplier: 0.75, MinRemainingAfterCache: 256 * MiB, SpreadFactor: 0.1}
}

// Validate checks 0 < ResourceMultiplier < 1, SpreadFactor ≥ 0 and
// ResourceMultiplier·(SpreadFactor+1) < 1.
func (c Config) Validate() error {
	var errs []error
	if !(c.ResourceMultiplier > 0 && c.ResourceMultiplier < 1) {
		errs = append(errs, fmt.Errorf("resource multiplier %v is not between 0 and 1", c.ResourceMultiplier))
	}
	if !(c.SpreadFactor >= 0) || math.IsInf(c.SpreadFactor, 0) {
		errs = append(errs, fmt.Errorf("spread factor %v is negative or infinite", c.SpreadFactor))
	}
	if !(c.ResourceMultiplier*(c.SpreadFactor+1) < 1) {
		errs = append(errs, fmt.Errorf("resource multiplier × (spread factor + 1) = %v is not below 1",
			c.ResourceMultiplier*(c.SpreadFactor+1)))
	}
	return errors.Join(errs...)
}

// Size is the cache for total bytes of memory:
// min((total − MinRemainingAfterCache)/(1+SpreadFactor), total·ResourceMultiplier),
// rounded down to a whole MiB, and 0 when total leaves nothing after
// MinRemainingAfterCache.
func (c Config) Size(total uint64) uint64 {
	if total <= c.MinRemainingAfterCache {
		return 0
	}
	avail := float64(total - c.MinRemainingAfterCache)
	size := min(avail/(1+c.SpreadFactor), float64(total)*c.ResourceMultiplier)
	mib := uint64(size / MiB)
	return mib * MiB
}
