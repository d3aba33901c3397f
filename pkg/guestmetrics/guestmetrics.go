// Package guestmetrics is the guest's system metrics exporter: the five
// gauges the autoscaler-agent scrapes from :9100 (host_load1, host_load5,
// host_memory_total_bytes, host_memory_available_bytes,
// host_memory_cached_bytes), each one series, read from /proc at every
// scrape so they always follow what the guest sees (memory included, right
// after a resize).
package guestmetrics

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Sample is one reading of the guest's load and memory.
type Sample struct {
	Load1, Load5                      float64
	MemTotal, MemAvailable, MemCached float64 // bytes
}

// ParseLoadavg reads /proc/loadavg's first two fields.
func ParseLoadavg(r io.Reader) (load1, load5 float64, err error) {
	var l1, l5 float64
	if _, err := fmt.Fscan(r, &l1, &l5); err != nil {
		return 0, 0, fmt.Errorf("parse loadavg: %w", err)
	}
	return l1, l5, nil
}

// ParseMeminfo reads MemTotal, MemAvailable and Cached (in bytes).
func ParseMeminfo(r io.Reader) (total, available, cached float64, err error) {
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total, found = kb*1024, found|1
		case "MemAvailable:":
			available, found = kb*1024, found|2
		case "Cached:":
			cached, found = kb*1024, found|4
		}
	}
	if found != 7 {
		return 0, 0, 0, fmt.Errorf("parse meminfo: MemTotal, MemAvailable or Cached missing")
	}
	return total, available, cached, sc.Err()
}

// Read takes a sample from a /proc (or a folder laid out like it).
func Read(proc string) (Sample, error) {
	var s Sample
	la, err := os.Open(filepath.Join(proc, "loadavg"))
	if err != nil {
		return s, err
	}
	defer la.Close()
	if s.Load1, s.Load5, err = ParseLoadavg(la); err != nil {
		return s, err
	}
	mi, err := os.Open(filepath.Join(proc, "meminfo"))
	if err != nil {
		return s, err
	}
	defer mi.Close()
	s.MemTotal, s.MemAvailable, s.MemCached, err = ParseMeminfo(mi)
	return s, err
}

// Collector exports a fresh Sample at every scrape.
type Collector struct {
	Proc string // "/proc"
}

var (
	descLoad1     = prometheus.NewDesc("host_load1", "1-minute load average.", nil, nil)
	descLoad5     = prometheus.NewDesc("host_load5", "5-minute load average.", nil, nil)
	descMemTotal  = prometheus.NewDesc("host_memory_total_bytes", "Memory the guest has (MemTotal).", nil, nil)
	descMemAvail  = prometheus.NewDesc("host_memory_available_bytes", "Memory available for new allocations (MemAvailable).", nil, nil)
	descMemCached = prometheus.NewDesc("host_memory_cached_bytes", "Page cache (Cached).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLoad1, descLoad5, descMemTotal, descMemAvail, descMemCached} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A failed read exports nothing,
// so the agent sees the metrics missing rather than zeros.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	s, err := Read(c.Proc)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descMemTotal, err)
		return
	}
	for _, m := range []struct {
		d *prometheus.Desc
		v float64
	}{{descLoad1, s.Load1}, {descLoad5, s.Load5}, {descMemTotal, s.MemTotal}, {descMemAvail, s.MemAvailable}, {descMemCached, s.MemCached}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.GaugeValue, m.v)
	}
}
