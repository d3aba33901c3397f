package daemon

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ParseCPUList parses a kernel CPU list ("0-3,5") into CPU numbers.
func ParseCPUList(s string) ([]int, error) {
	var out []int
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

// CPUChange is one write to /sys/devices/system/cpu/cpuN/online.
type CPUChange struct {
	CPU    int
	Online bool
}

// PlanCPUs lists the changes that leave want CPUs online out of present,
// given those online now: onlining the lowest offline CPUs first and
// offlining the highest first, never touching cpu0.
func PlanCPUs(present, online []int, want int) ([]CPUChange, error) {
	if want < 1 || want > len(present) {
		return nil, fmt.Errorf("%d CPUs asked for; the guest has %d", want, len(present))
	}
	isOnline := map[int]bool{}
	for _, c := range online {
		isOnline[c] = true
	}
	var changes []CPUChange
	have := len(online)
	for _, c := range present {
		if have >= want {
			break
		}
		if c != 0 && !isOnline[c] {
			changes = append(changes, CPUChange{c, true})
			have++
		}
	}
	for i := len(present) - 1; i >= 0 && have > want; i-- {
		if c := present[i]; c != 0 && isOnline[c] {
			changes = append(changes, CPUChange{c, false})
			have--
		}
	}
	return changes, nil
}

// ParseMilliCPU reads the /cpu body: a whole number of milli-CPUs
// ("1500", or "1500m").
func ParseMilliCPU(s string) (int, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), "m")
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive number of milli-CPUs", s)
	}
	return n, nil
}

// CPUServer serves GET/PUT /cpu: the guest's online CPUs in milli-CPUs.
type CPUServer struct {
	// Sys is /sys (a folder laid out like it in tests).
	Sys string
	mu  sync.Mutex
}

func (s *CPUServer) read(name string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(s.Sys, "devices/system/cpu", name))
	if err != nil {
		return nil, err
	}
	return ParseCPUList(string(b))
}

// ServeHTTP implements GET /cpu and PUT /cpu.
func (s *CPUServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	online, err := s.read("online")
	if err != nil {
		http.Error(w, "read online CPUs: "+err.Error(), http.StatusInternalServerError)
		return
	}
	switch r.Method {
	case http.MethodGet:
		fmt.Fprintf(w, "%d", len(online)*1000)
	case http.MethodPut:
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64))
		milli, err := ParseMilliCPU(string(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		present, err := s.read("present")
		if err != nil {
			http.Error(w, "read present CPUs: "+err.Error(), http.StatusInternalServerError)
			return
		}
		changes, err := PlanCPUs(present, online, (milli+999)/1000)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, c := range changes {
			v := "0"
			if c.Online {
				v = "1"
			}
			p := filepath.Join(s.Sys, "devices/system/cpu", fmt.Sprintf("cpu%d", c.CPU), "online")
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				http.Error(w, fmt.Sprintf("set cpu%d online=%s: %v", c.CPU, v, err), http.StatusInternalServerError)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	default:
		w.Header().Set("Allow", "GET, PUT")
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
	}
}
