// Command vmscale-top shows, every second, what the named VirtualMachines
// have and what they were granted: phase, vCPUs and memory (status / spec),
// the guest's load, the scheduler's permit, the last scaling's latency,
// restarts and node. On a terminal it redraws a table; otherwise (a log, a
// pipe) it prints a line per VM each time its row changes, without escape
// codes. --once prints one table and exits.
//
//	vmscale-top [--kubeconfig K] [-n NS] [--once] VM...
//
// It reads the VMs through the apiserver and scrapes each guest's exporter
// on <pod IP>:9100, so it must run where pod IPs are routable (a node, or
// the host of the local cluster).
// vmscale:no-image
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmscale/vmscale/pkg/top"
)

func main() {
	var kubeconfig, namespace, bannerFile string
	var once bool
	var interval time.Duration
	var metricsPort int
	// A flag set of its own: a dependency registers its own --kubeconfig
	// on the global one.
	fs := flag.NewFlagSet("vmscale-top", flag.ExitOnError)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&namespace, "n", "", "namespace of the VMs (default: the kubeconfig context's)")
	fs.StringVar(&namespace, "namespace", "", "same as -n")
	fs.BoolVar(&once, "once", false, "print one table and exit (exit status 1 if a VM could not be read)")
	fs.DurationVar(&interval, "interval", time.Second, "time between samples")
	fs.IntVar(&metricsPort, "metrics-port", 9100, "the guest exporter's port (the agent's metrics.system.port)")
	fs.StringVar(&bannerFile, "banner-file", "", "a file whose first line is shown above the table (a script's current step, e.g. make demo's)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: vmscale-top [--kubeconfig K] [-n NS] [--once] VM...\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() == 0 || interval <= 0 {
		fs.Usage()
		os.Exit(2)
	}
	src, err := newSource(kubeconfig, namespace, metricsPort)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmscale-top:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := banner{path: bannerFile}
	os.Exit(run(ctx, src, fs.Args(), once, interval, isTerminal(os.Stdout), &b, os.Stdout))
}

// run samples until ctx ends (or once) and prints; its result is the exit
// status.
func run(ctx context.Context, src *source, vms []string, once bool, interval time.Duration, tty bool, b *banner, out io.Writer) int {
	table := top.NewTable(vms)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		samples := src.sampleAll(ctx, vms, time.Now())
		if ctx.Err() != nil {
			// Interrupted mid-sample: its errors are ours, not the VMs'.
			return 0
		}
		switch {
		case once:
			fmt.Fprintln(out, strings.Join(table.Frame(samples), "\n"))
			for _, s := range samples {
				if s.Err != "" {
					return 1
				}
			}
			return 0
		case tty:
			head := ""
			if text, _ := b.read(); text != "" {
				head = text + "\n\n"
			}
			fmt.Fprint(out, top.ClearScreen+head+strings.Join(table.Frame(samples), "\n")+"\n")
		default:
			if text, changed := b.read(); changed && text != "" {
				fmt.Fprintln(out, "# "+text)
			}
			if lines := table.Changes(samples); len(lines) > 0 {
				fmt.Fprintln(out, strings.Join(lines, "\n"))
			}
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
}

// banner is the first line of a file, re-read at every sample; no file, or
// an unreadable one, shows nothing.
type banner struct {
	path string
	last string
}

// read returns the current line and whether it changed since the last read.
func (b *banner) read() (string, bool) {
	if b == nil || b.path == "" {
		return "", false
	}
	raw, err := os.ReadFile(b.path)
	if err != nil {
		return "", false
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	line = strings.TrimSpace(line)
	changed := line != b.last
	b.last = line
	return line, changed
}

// isTerminal reports whether f is a character device (a terminal), not a
// file or a pipe.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
