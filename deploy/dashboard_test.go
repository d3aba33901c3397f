// Package deploy holds the rendered manifests and the Grafana dashboard;
// its test keeps the dashboard true to the code.
package deploy

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// metric is a vmscale metric as the code registers it.
type metric struct {
	kind   string   // histogram, counter, gauge, summary; "" when built with NewDesc
	labels []string // nil when the code does not spell them out next to the name
}

var (
	metricName  = regexp.MustCompile(`vmscale_[a-z0-9_]+`)
	nameLiteral = regexp.MustCompile(`"(vmscale_[a-z0-9_]+)"`)
	stringLit   = regexp.MustCompile(`"([a-z_]+)"`)
	optsKind    = regexp.MustCompile(`(Histogram|Counter|Gauge|Summary)Opts\{|NewDesc\(|\{"vmscale_`)
	constructor = regexp.MustCompile(`prometheus\.New(Histogram|Counter|Gauge|Summary)(Vec)?\(`)
	// metricEnd is where the text about one metric ends: the next metric,
	// or the end of the declaration or function holding it.
	metricEnd = regexp.MustCompile(`Name:|prometheus\.New|\{"vmscale_|\n\}|\nfunc `)
	byClause  = regexp.MustCompile(`\bby \(([^)]*)\)`)
	selector  = regexp.MustCompile(`(vmscale_[a-z0-9_]+)\{([^}]*)\}`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	rateOf    = regexp.MustCompile(`\b(rate|increase|irate)\((vmscale_[a-z0-9_]+)`)
)

// registered reads every vmscale_ metric name from the module's Go
// sources (tests excluded), with its kind and labels where the code states
// them beside the name.
func registered(t *testing.T) map[string]metric {
	t.Helper()
	out := map[string]metric{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, loc := range nameLiteral.FindAllSubmatchIndex(src, -1) {
			name := string(src[loc[2]:loc[3]])
			m := metric{}
			before := src[max(0, loc[0]-300):loc[0]]
			if all := optsKind.FindAllSubmatch(before, -1); len(all) > 0 {
				m.kind = strings.ToLower(string(all[len(all)-1][1]))
			}
			// A plain Counter/Gauge/Histogram has no labels; a Vec's or a
			// NewDesc's are the []string{...} of the same call, before
			// the next metric starts. Labels built elsewhere stay unknown.
			if all := constructor.FindAllSubmatch(before, -1); len(all) > 0 && m.kind != "" && len(all[len(all)-1][2]) == 0 {
				m.labels = []string{}
			}
			after := src[loc[1]:min(len(src), loc[1]+400)]
			if next := metricEnd.FindIndex(after); next != nil {
				after = after[:next[0]]
			}
			if i := strings.Index(string(after), "[]string{"); i >= 0 {
				list := after[i:]
				list = list[:strings.IndexByte(string(list), '}')+1]
				m.labels = []string{}
				for _, l := range stringLit.FindAllSubmatch(list, -1) {
					m.labels = append(m.labels, string(l[1]))
				}
			}
			out[name] = m
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	return d
}

func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

// The dashboard is one Grafana 10 imports: a Prometheus datasource variable
// every query uses, unique panel ids, panels on the 24-column grid without
// overlapping.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want a title, a uid and schemaVersion >= 36 (Grafana 10)", d.Title, d.UID, d.SchemaVersion)
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus datasource variable")
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range flatten(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != dsVar || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %+v, %d queries; want %s and at least one query", p.Title, p.Datasource, len(p.Targets), dsVar)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != dsVar {
				t.Errorf("panel %q: a query's datasource is %+v, want %s", p.Title, tg.Datasource, dsVar)
			}
		}
	}
}

// Every metric a query names is registered in the code, used as its kind
// allows (buckets of histograms, rate() of counters) and grouped or
// filtered only by labels it has.
func TestDashboardMetricsExist(t *testing.T) {
	d := loadDashboard(t)
	reg := registered(t)
	if len(reg) < 30 {
		t.Fatalf("found only %d vmscale_ metrics in the code; the source walk is broken", len(reg))
	}
	used := 0
	for _, p := range flatten(d.Panels) {
		for _, tg := range p.Targets {
			names := metricName.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no vmscale_ metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				used++
				base, m, ok := lookup(reg, n)
				if !ok {
					t.Errorf("panel %q: metric %s is registered nowhere in the code", p.Title, n)
					continue
				}
				switch {
				case strings.HasSuffix(n, "_bucket") && m.kind != "histogram":
					t.Errorf("panel %q: %s: %s is a %q, not a histogram", p.Title, n, base, m.kind)
				case (strings.HasSuffix(n, "_sum") || strings.HasSuffix(n, "_count")) && base != n && m.kind != "histogram" && m.kind != "summary":
					t.Errorf("panel %q: %s: %s is a %q", p.Title, n, base, m.kind)
				}
				if m.labels == nil {
					continue
				}
				have := map[string]bool{"le": m.kind == "histogram"}
				for _, l := range m.labels {
					have[l] = true
				}
				for _, l := range labelsUsed(tg.Expr, n) {
					if !have[l] {
						t.Errorf("panel %q: %s has no label %q (labels %v)", p.Title, base, l, m.labels)
					}
				}
			}
			for _, r := range rateOf.FindAllStringSubmatch(tg.Expr, -1) {
				n := r[2]
				_, m, ok := lookup(reg, n)
				if ok && m.kind != "counter" && !strings.HasSuffix(n, "_bucket") && !strings.HasSuffix(n, "_count") && !strings.HasSuffix(n, "_sum") {
					t.Errorf("panel %q: %s(%s) of a %q", p.Title, r[1], n, m.kind)
				}
			}
		}
	}
	if used == 0 {
		t.Fatal("the dashboard names no metric")
	}
}

// lookup finds n, or the histogram whose series n is.
func lookup(reg map[string]metric, n string) (string, metric, bool) {
	if m, ok := reg[n]; ok {
		return n, m, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(n, suffix); ok {
			if m, ok := reg[base]; ok {
				return base, m, true
			}
		}
	}
	return "", metric{}, false
}

// labelsUsed are the labels expr filters n on and groups by.
func labelsUsed(expr, n string) []string {
	var out []string
	for _, s := range selector.FindAllStringSubmatch(expr, -1) {
		if s[1] != n {
			continue
		}
		for _, m := range matcher.FindAllStringSubmatch(s[2], -1) {
			out = append(out, m[1])
		}
	}
	for _, b := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(b[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}
