package webhookcert

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestGenerateVerifiesForEveryHost(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	hosts := append(ServiceHosts("neonvm-system", "neonvm-webhook-service"), "127.0.0.1")
	b, err := Generate(hosts, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(b.CertPEM, b.KeyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not match: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b.CAPEM) {
		t.Fatal("CA PEM does not parse")
	}
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("does not verify for %s: %v", h, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: roots, CurrentTime: now}); err == nil {
		t.Error("verifies for a host it was not made for")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: hosts[0], Roots: roots, CurrentTime: now.Add(48 * time.Hour)}); err == nil {
		t.Error("still valid after its validity")
	}
	// Another bundle's CA must not vouch for this certificate.
	other, _ := Generate(hosts, now, time.Hour)
	otherRoots := x509.NewCertPool()
	otherRoots.AppendCertsFromPEM(other.CAPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: hosts[0], Roots: otherRoots, CurrentTime: now}); err == nil {
		t.Error("verified by an unrelated CA")
	}
}

func TestGenerateNeedsHosts(t *testing.T) {
	if _, err := Generate(nil, time.Now(), time.Hour); err == nil {
		t.Fatal("accepted no host names")
	}
}

func TestWrite(t *testing.T) {
	b, err := Generate([]string{"localhost"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Fatalf("written pair does not load: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", st.Mode(), err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*.tmp"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}
