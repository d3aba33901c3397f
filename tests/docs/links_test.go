// Package docs checks the repository's references to its own documents:
// every markdown link and every mention of a docs/ page or a .md file in the
// Go, Markdown, shell and YAML sources and the Makefile must name a file
// that exists in the repository (and, with a #section, a heading it has),
// and nothing may cite the team's notes kept outside the repository. It
// reads files only: no tools, no network, well under a second.
package docs

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// Never scanned: version control and fixtures copied from other projects
// (skipNames, anywhere), build outputs, generated manifests (their comments
// come from sources that are scanned) and this test's own patterns.
var (
	skipNames = map[string]bool{".git": true, "vendor": true, "node_modules": true, "testdata": true}
	skipDirs  = map[string]bool{"bin": true, "_output": true, "config/crd/bases": true, "tests/docs": true}
)

// skipFiles are generated from sources that are scanned.
var skipFiles = map[string]bool{
	"deploy/neonvm.yaml":               true,
	"deploy/vmscale.yaml":              true,
	"deploy/vmscale-cert-manager.yaml": true,
	"config/webhook/manifests.yaml":    true,
	"config/rbac/role.yaml":            true,
	"api/v1/zz_generated.deepcopy.go":  true,
}

var (
	// [text](target) in Markdown; the target ends at whitespace or ')'.
	mdLink = regexp.MustCompile(`\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+"[^"]*")?\)`)
	// A path to a Markdown file: docs/x.md, deploy/multus/README.md, api.md#x.
	mdPath = regexp.MustCompile(`(^|[^\w./-])((?:\.\.?/)*[\w.-]+(?:/[\w.-]+)*\.md)(#[\w-]+)?`)
	// References that always point outside the repository.
	outside = regexp.MustCompile(`\.\./shared\b|/work/shared\b|\bspec §|\bspec/(neonvm|protocols)\.md`)
	urlLike = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://\S*`)
)

func scanned(rel string) bool {
	base := filepath.Base(rel)
	if base == "Makefile" {
		return true
	}
	switch filepath.Ext(rel) {
	case ".go", ".md", ".sh", ".yaml", ".yml":
		return true
	}
	return false
}

func repoRoot(t *testing.T) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s: %v", root, err)
	}
	return root
}

func TestLinksResolve(t *testing.T) {
	root := repoRoot(t)
	c := &checker{root: root, anchors: map[string]map[string]bool{}}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (skipDirs[rel] || skipNames[d.Name()]) {
				return filepath.SkipDir
			}
			return nil
		}
		if skipFiles[rel] || !scanned(rel) {
			return nil
		}
		return c.file(rel)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.problems {
		t.Error(p)
	}
	if c.refs == 0 {
		t.Fatal("found no references at all: is the scan broken?")
	}
	t.Logf("%d references checked", c.refs)
}

type checker struct {
	root     string
	anchors  map[string]map[string]bool // file (relative to root) → heading slugs
	problems []string
	refs     int
}

func (c *checker) file(rel string) error {
	f, err := os.Open(filepath.Join(c.root, rel))
	if err != nil {
		return err
	}
	defer f.Close()
	isMD := strings.HasSuffix(rel, ".md")
	dir := filepath.Dir(rel)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		raw := sc.Text()
		if !strings.Contains(raw, ".md") && !strings.Contains(raw, "shared") && !strings.Contains(raw, "§") &&
			!(isMD && strings.Contains(raw, "](")) {
			continue
		}
		line := urlLike.ReplaceAllString(raw, "")
		where := fmt.Sprintf("%s:%d", rel, n)
		if m := outside.FindString(line); m != "" {
			c.refs++
			c.problems = append(c.problems, fmt.Sprintf("%s: %q cites notes outside the repository; cite docs/ instead", where, m))
			continue
		}
		seen := map[string]bool{}
		if isMD {
			for _, m := range mdLink.FindAllStringSubmatch(raw, -1) {
				target := m[1]
				seen[target] = true
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				c.check(where, rel, dir, target, false)
			}
		}
		for _, m := range mdPath.FindAllStringSubmatch(line, -1) {
			target := m[2] + m[3]
			if seen[target] {
				continue
			}
			c.check(where, rel, dir, target, true)
		}
	}
	return sc.Err()
}

// check resolves target (a path with an optional #anchor, or an anchor
// alone) from the file rel in dir. A markdown link is relative to its file;
// a bare mention may be relative to the file or to the repository root.
func (c *checker) check(where, rel, dir, target string, bare bool) {
	c.refs++
	path, anchor, _ := strings.Cut(target, "#")
	var candidates []string
	switch {
	case path == "":
		candidates = []string{rel}
	case bare && !strings.HasPrefix(path, "."):
		candidates = []string{path, filepath.ToSlash(filepath.Join(dir, path))}
	default:
		candidates = []string{filepath.ToSlash(filepath.Join(dir, path))}
	}
	found := ""
	for _, cand := range candidates {
		if strings.HasPrefix(cand, "../") {
			continue // outside the repository
		}
		if _, err := os.Stat(filepath.Join(c.root, cand)); err == nil {
			found = cand
			break
		}
	}
	if found == "" {
		c.problems = append(c.problems, fmt.Sprintf("%s: %q does not exist in the repository", where, target))
		return
	}
	if anchor == "" || !strings.HasSuffix(found, ".md") {
		return
	}
	if !c.headings(found)[anchor] {
		c.problems = append(c.problems, fmt.Sprintf("%s: %q: %s has no heading #%s", where, target, found, anchor))
	}
}

// headings returns the GitHub-style anchors of a Markdown file's headings.
func (c *checker) headings(rel string) map[string]bool {
	if h, ok := c.anchors[rel]; ok {
		return h
	}
	h := map[string]bool{}
	c.anchors[rel] = h
	data, err := os.ReadFile(filepath.Join(c.root, rel))
	if err != nil {
		return h
	}
	count := map[string]int{}
	fence := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fence = !fence
			continue
		}
		if fence || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		s := slug(text)
		if k := count[s]; k > 0 {
			h[fmt.Sprintf("%s-%d", s, k)] = true
		} else {
			h[s] = true
		}
		count[s]++
	}
	return h
}

// slug is GitHub's heading anchor: lower case, spaces to hyphens, and
// everything but letters, digits, '-' and '_' dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"The agent's config file":                  "the-agents-config-file",
		"Where vmscale differs, and why":           "where-vmscale-differs-and-why",
		"A local two-node cluster, without Docker": "a-local-two-node-cluster-without-docker",
		"Start here: `make demo`":                  "start-here-make-demo",
		"Agent ↔ plugin":                           "agent--plugin",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}
