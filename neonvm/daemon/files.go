package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmscale/vmscale/neonvm/files"
)

// maxFilesBody bounds a PUT /files body: ConfigMaps and Secrets are at
// most 1 MiB, base64 adds a third.
const maxFilesBody = 4 << 20

// FilesServer serves the watched-disk endpoints under /files/: GET
// /files/<mountPath> answers the checksum of the folder's current contents;
// PUT /files/<mountPath> with {"<file>":{"data":"<base64>"}} replaces them
// atomically. Only folders laid out for watching (holding ..data, as the
// guest's init makes them) are served: the daemon writes nowhere else.
type FilesServer struct {
	// Root is prefixed to every path ("/" in the guest).
	Root string
	// Log records each update; nil: none.
	Log *slog.Logger
	Now func() time.Time
}

func (s *FilesServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rel := strings.TrimPrefix(r.URL.Path, "/files")
	clean := filepath.Clean("/" + rel)
	if rel == "" || clean == "/" || clean != strings.TrimSuffix("/"+strings.TrimPrefix(rel, "/"), "/") {
		http.Error(w, fmt.Sprintf("path %q: want /files/<the disk's absolute mountPath>", r.URL.Path), http.StatusBadRequest)
		return
	}
	dir := filepath.Join(s.Root, clean)
	if _, err := os.Lstat(filepath.Join(dir, files.DataLink)); err != nil {
		http.Error(w, fmt.Sprintf("%s is not a watched disk's folder", clean), http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet:
		current, err := files.Read(dir)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, files.Checksum(current))
	case http.MethodPut:
		raw, err := io.ReadAll(io.LimitReader(r.Body, maxFilesBody+1))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if len(raw) > maxFilesBody {
			http.Error(w, fmt.Sprintf("body over %d bytes", maxFilesBody), http.StatusRequestEntityTooLarge)
			return
		}
		var body map[string]files.File
		if err := json.Unmarshal(raw, &body); err != nil {
			http.Error(w, `malformed body: want {"<file>":{"data":"<base64>"}}: `+err.Error(), http.StatusBadRequest)
			return
		}
		contents := make(map[string][]byte, len(body))
		for name, f := range body {
			if err := files.ValidName(name); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			contents[name] = f.Data
		}
		now := time.Now
		if s.Now != nil {
			now = s.Now
		}
		if err := files.Write(dir, contents, now()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if s.Log != nil {
			s.Log.Info("watched disk updated", "path", clean, "files", len(contents), "checksum", files.Checksum(contents))
		}
	default:
		w.Header().Set("Allow", "GET, PUT")
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
	}
}
