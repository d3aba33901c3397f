package top

import (
	"strconv"
	"strings"
	"time"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

// ClearScreen moves a terminal's cursor home and clears it, before a redraw.
const ClearScreen = "\x1b[H\x1b[2J"

// maxNote caps an error's text in a row, so one bad VM keeps its line.
const maxNote = 120

// column is one column of the table; a value wider than width pushes the
// rest of its row right rather than being cut.
type column struct {
	title string
	width int
}

// Table prints samples of a fixed set of VMs. Column widths are fixed when
// it is made, so the lines of a log stay aligned.
type Table struct {
	cols []column
	// last is each VM's row without its time: a log gets a new line only
	// when it changes.
	last    map[string]string
	started bool
}

// NewTable makes a table for the VMs named.
func NewTable(vms []string) *Table {
	vmWidth := len("VM")
	for _, n := range vms {
		vmWidth = max(vmWidth, len(n))
	}
	return &Table{
		cols: []column{
			{"TIME", 8}, {"VM", vmWidth}, {"PHASE", 12}, {"VCPUS", 9}, {"MEMORY", 11}, {"LOAD1", 5},
			{"PERMIT", 10}, {"LATENCY", 9}, {"RESTARTS", 8}, {"NODE", 10}, {"NOTE", 0},
		},
		last: map[string]string{},
	}
}

// Header is the title line.
func (t *Table) Header() string {
	titles := make([]string, len(t.cols))
	for i, c := range t.cols {
		titles[i] = c.title
	}
	return t.line(titles)
}

// Row is one sample's line.
func (t *Table) Row(s Sample) string {
	return t.line(append([]string{s.At.Format("15:04:05")}, cells(s)...))
}

// Frame is the whole table for samples: what a terminal shows after
// ClearScreen.
func (t *Table) Frame(samples []Sample) []string {
	out := make([]string, 0, len(samples)+1)
	out = append(out, t.Header())
	for _, s := range samples {
		out = append(out, t.Row(s))
	}
	return out
}

// Changes is what a log gets for samples: the header the first time, then
// the row of each VM whose row (time aside) differs from its last one.
func (t *Table) Changes(samples []Sample) []string {
	var out []string
	if !t.started {
		out = append(out, t.Header())
		t.started = true
	}
	for _, s := range samples {
		key := t.line(append([]string{""}, cells(s)...))
		if prev, ok := t.last[s.VM]; ok && prev == key {
			continue
		}
		t.last[s.VM] = key
		out = append(out, t.Row(s))
	}
	return out
}

func (t *Table) line(values []string) string {
	var b strings.Builder
	for i, v := range values {
		if i > 0 {
			b.WriteString("  ")
		}
		b.WriteString(v)
		if pad := t.cols[i].width - len(v); pad > 0 && i < len(values)-1 {
			b.WriteString(strings.Repeat(" ", pad))
		}
	}
	return strings.TrimRight(b.String(), " ")
}

// cells are a sample's values after TIME.
func cells(s Sample) []string {
	if s.Err != "" {
		return []string{s.VM, "?", "-", "-", "-", "-", "-", "-", "-", note(s.Err)}
	}
	var notes []string
	load := "-"
	switch {
	case s.Load1 != nil:
		load = strconv.FormatFloat(*s.Load1, 'f', 2, 64)
	case s.LoadErr != "":
		load = "?"
		notes = append(notes, "load: "+s.LoadErr)
	}
	permit := "-"
	switch {
	case s.PermitErr != "":
		permit = "?"
		notes = append(notes, s.PermitErr)
	case s.Permit != nil:
		permit = resources(*s.Permit)
	}
	if s.Requested != nil && (s.Permit == nil || s.Requested.AnyAbove(*s.Permit)) && s.PermitErr == "" {
		notes = append(notes, "asked "+resources(*s.Requested))
	}
	return []string{
		s.VM, orDash(s.Phase),
		optCPU(s.CPUs) + "/" + CPU(s.CPUsSpec),
		optBytes(s.Mem) + "/" + Bytes(s.MemSpec),
		load, permit, scaling(s.Scaling), strconv.Itoa(int(s.Restarts)), orDash(s.Node),
		note(strings.Join(notes, "; ")),
	}
}

func note(s string) string {
	if len(s) > maxNote {
		return s[:maxNote-3] + "..."
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func optCPU(c *vmv1.MilliCPU) string {
	if c == nil {
		return "-"
	}
	return CPU(*c)
}

func optBytes(b *api.Bytes) string {
	if b == nil {
		return "-"
	}
	return Bytes(*b)
}

func resources(r api.Resources) string { return CPU(r.VCPU) + "/" + Bytes(r.Mem) }

// scaling is the LATENCY cell: "up 2s" once reached, "up >5s" while the
// controller has not reached the target yet. The revisions' timestamps
// have whole seconds (metav1.Time), so the cell does too: a step reached
// within the second it was asked for shows as "<1s", one asked for less
// than a second ago as "…".
func scaling(s Scaling) string {
	if !s.Known {
		return "-"
	}
	secs := strconv.FormatInt(int64(s.Took/time.Second), 10) + "s"
	var d string
	switch {
	case s.Done && s.Took < time.Second:
		d = "<1s"
	case s.Done:
		d = secs
	case s.Took < time.Second:
		d = "…"
	default:
		d = ">" + secs
	}
	if s.Direction == "" {
		return d
	}
	return s.Direction + " " + d
}

// CPU writes vCPUs as a decimal: "0.25", "1.25", "2".
func CPU(m vmv1.MilliCPU) string {
	return strconv.FormatFloat(float64(m)/1000, 'f', -1, 64)
}

// Bytes writes memory in the largest binary unit that keeps it readable:
// "512Mi", "1.5Gi", "2Gi" (at most two decimals).
func Bytes(b api.Bytes) string {
	const ki, mi, gi = 1 << 10, 1 << 20, 1 << 30
	switch {
	case b >= gi:
		return decimal(float64(b)/gi, 2) + "Gi"
	case b >= mi:
		return decimal(float64(b)/mi, 1) + "Mi"
	case b >= ki:
		return decimal(float64(b)/ki, 1) + "Ki"
	}
	return strconv.FormatUint(uint64(b), 10)
}

func decimal(v float64, places int) string {
	s := strconv.FormatFloat(v, 'f', places, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
