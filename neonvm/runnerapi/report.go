package runnerapi

import "strings"

// The runner's report on QEMU's end is the runner container's termination
// message (docs/neonvm.md#when-qemu-stops): a first line saying how and why
// QEMU ended, the last QMP events, then ReportOutputSep and the last lines
// QEMU and the guest console printed. The controller shows its first line
// in the VM's condition and fits the rest into an event.

// ReportOutputSep separates the report's summary from QEMU's last output.
const ReportOutputSep = "\nlast output:\n"

// LastLines is the end of lines that fits in limit bytes, joined with
// newlines: whole lines only.
func LastLines(lines []string, limit int) string {
	size, first := 0, len(lines)
	for first > 0 && size+len(lines[first-1])+1 <= limit {
		first--
		size += len(lines[first]) + 1
	}
	return strings.Join(lines[first:], "\n")
}
