package qmp

import (
	"context"
	"fmt"
	"sort"
)

// MigrationCapabilities turns migration capabilities on or off by name
// ("postcopy-ram", "xbzrle", "auto-converge", "zero-blocks", ...).
type MigrationCapabilities map[string]bool

// MigrateSetCapabilities sets capabilities, on both QEMUs of a migration.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps MigrationCapabilities) error {
	names := make([]string, 0, len(caps))
	for n := range caps {
		names = append(names, n)
	}
	sort.Strings(names)
	list := make([]map[string]any, 0, len(caps))
	for _, n := range names {
		list = append(list, map[string]any{"capability": n, "state": caps[n]})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// MigrationParameters are the migrate-set-parameters vmscale uses; zero
// values are left unchanged.
type MigrationParameters struct {
	// MaxBandwidth in bytes per second.
	MaxBandwidth int64 `json:"max-bandwidth,omitempty"`
	// DowntimeLimitMs is the longest pause QEMU may plan for the final copy.
	DowntimeLimitMs int64 `json:"downtime-limit,omitempty"`
	// XBZRLECacheSize in bytes.
	XBZRLECacheSize    int64  `json:"xbzrle-cache-size,omitempty"`
	MultifdCompression string `json:"multifd-compression,omitempty"`
}

// MigrateSetParameters sets migration parameters.
func (c *Client) MigrateSetParameters(ctx context.Context, p MigrationParameters) error {
	return c.Execute(ctx, "migrate-set-parameters", p, nil)
}

// Migrate starts a migration to uri ("tcp:10.0.0.2:20187") and returns at
// once; poll QueryMigrate.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	if uri == "" {
		return fmt.Errorf("migrate: no target uri")
	}
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateWithDisks starts a migration that also copies the writable disks:
// only their allocated data when incremental (NeonVM's default: the target
// has the same base image), all of it otherwise.
func (c *Client) MigrateWithDisks(ctx context.Context, uri string, incremental bool) error {
	if uri == "" {
		return fmt.Errorf("migrate: no target uri")
	}
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri, "inc": incremental, "blk": !incremental}, nil)
}

// MigrateStartPostcopy switches a running migration to post-copy.
func (c *Client) MigrateStartPostcopy(ctx context.Context) error {
	return c.Execute(ctx, "migrate-start-postcopy", nil, nil)
}

// MigrateCancel cancels a running migration.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// MigrationRAM counts the guest memory of a migration.
type MigrationRAM struct {
	Transferred int64 `json:"transferred"`
	Remaining   int64 `json:"remaining"`
	Total       int64 `json:"total"`
}

// MigrationInfo is query-migrate.
type MigrationInfo struct {
	// Status: "none", "setup", "active", "postcopy-active", "completed",
	// "failed", "cancelled", ...
	Status      string        `json:"status"`
	TotalTimeMs int64         `json:"total-time"`
	SetupTimeMs int64         `json:"setup-time"`
	DowntimeMs  int64         `json:"downtime"`
	RAM         *MigrationRAM `json:"ram,omitempty"`
	ErrorDesc   string        `json:"error-desc,omitempty"`
}

// QueryMigrate reports the migration's progress.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var out MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &out)
	return out, err
}
