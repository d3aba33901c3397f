package daemon

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscale/vmscale/neonvm/files"
)

func TestFilesServer(t *testing.T) {
	root := t.TempDir()
	disk := filepath.Join(root, "etc", "secret")
	if err := os.MkdirAll(disk, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := files.Write(disk, map[string][]byte{"password": []byte("old")}, time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "etc", "plain"), 0o755)
	srv := httptest.NewServer(&FilesServer{Root: root})
	defer srv.Close()
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, sum := do("GET", "/files/etc/secret", "")
	if code != 200 || sum != files.Checksum(map[string][]byte{"password": []byte("old")}) {
		t.Fatalf("GET: %d %q", code, sum)
	}
	// "bmV3" is base64 of "new".
	if code, msg := do("PUT", "/files/etc/secret", `{"password":{"data":"bmV3"},"user":{"data":"YQ=="}}`); code != 200 {
		t.Fatalf("PUT: %d %s", code, msg)
	}
	if data, _ := os.ReadFile(filepath.Join(disk, "password")); string(data) != "new" {
		t.Errorf("password = %q", data)
	}
	code, sum = do("GET", "/files/etc/secret", "")
	if code != 200 || sum != files.Checksum(map[string][]byte{"password": []byte("new"), "user": []byte("a")}) {
		t.Errorf("GET after PUT: %d %q", code, sum)
	}
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/files/etc/plain", "", 404},                              // not a watched folder
		{"PUT", "/files/etc/plain", `{}`, 404},                            // the daemon writes nowhere else
		{"GET", "/files/etc/secret/../secret", "", 400},                   // not a clean path
		{"GET", "/files", "", 400},                                        // no path
		{"PUT", "/files/etc/secret", `{"a":`, 400},                        // malformed JSON
		{"PUT", "/files/etc/secret", `{"..data":{"data":""}}`, 400},       // the layout's own names
		{"PUT", "/files/etc/secret", `{"a/b":{"data":""}}`, 400},          // not one element
		{"PUT", "/files/etc/secret", `{"a":{"data":"not base64!"}}`, 400}, // bad data
		{"POST", "/files/etc/secret", "", 405},
	} {
		if code, msg := do(c.method, c.path, c.body); code != c.want {
			t.Errorf("%s %s %s: %d %s, want %d", c.method, c.path, c.body, code, msg, c.want)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(disk, "password")); string(data) != "new" {
		t.Errorf("a rejected request changed the contents: %q", data)
	}
}
