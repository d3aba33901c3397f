package netattach

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeAPIServer answers GETs of pods' metadata, as the apiserver does for
// the metadata client, and requires the kubeconfig's token. pods maps
// "<namespace>/<name>" to the pod's networks annotation.
func fakeAPIServer(t *testing.T, l net.Listener, pods map[string]string) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sekret" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var ns, name string
		_, err := fmt.Sscanf(strings.ReplaceAll(r.URL.Path, "/", " "), " api v1 namespaces %s pods %s", &ns, &name)
		annotation, ok := pods[ns+"/"+name]
		if r.Method != http.MethodGet || err != nil || !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"%s not found"}`, r.URL.Path)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":%q,"namespace":%q,"annotations":{%q:%q}}}`,
			name, ns, NetworksAnnotation, annotation)
	})
	srv := httptest.NewUnstartedServer(h)
	if l != nil {
		srv.Listener.Close()
		srv.Listener = l
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: sekret}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, server)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPodAnnotations(t *testing.T) {
	srv := fakeAPIServer(t, nil, map[string]string{"demo/pg-1": "neonvm-system/neonvm-overlay-net@net1"})
	kc := writeKubeconfig(t, srv.URL)
	got, err := PodAnnotations(context.Background(), kc, "demo", "pg-1")
	if err != nil || got[NetworksAnnotation] != "neonvm-system/neonvm-overlay-net@net1" {
		t.Fatalf("annotations %v, %v", got, err)
	}
	if _, err := PodAnnotations(context.Background(), kc, "demo", "other"); err == nil || !strings.Contains(err.Error(), "demo/other") {
		t.Errorf("missing pod: %v", err)
	}
}
