// Command netcheck is the test workload of vmscale's cluster tests: one small
// static binary that serves HTTP, fetches URLs, serves a validating admission
// webhook, and creates a tap device, so the tests check the cluster's network
// and privileges with a real pod and an image built by `make images`.
//
//	netcheck serve ADDR                   HTTP: "/" answers "netcheck <hostname>"
//	netcheck get URL [BEARER_FILE CA_FILE] print the body; fail on non-2xx
//	netcheck webhook ADDR CERT KEY        deny creates of objects labelled deny=true
//	netcheck tap NAME                     create tap NAME, set net.ipv4.ip_forward=1
//	netcheck pg HOST:PORT QUERY           run QUERY as postgres (trust); print the first value
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: netcheck serve|get|webhook|tap|pg ARGS"))
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2])
	case "get":
		err = get(os.Args[2:])
	case "webhook":
		if len(os.Args) != 5 {
			err = fmt.Errorf("usage: netcheck webhook ADDR CERT KEY")
			break
		}
		err = webhook(os.Args[2], os.Args[3], os.Args[4])
	case "tap":
		err = tap(os.Args[2])
	case "pg":
		if len(os.Args) != 4 {
			err = fmt.Errorf("usage: netcheck pg HOST:PORT QUERY")
			break
		}
		err = pgQuery(os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "netcheck:", err)
	os.Exit(1)
}

func serve(addr string) error {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "netcheck %s\n", host)
	})
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second}
	return srv.ListenAndServe()
}

func get(args []string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	req, err := http.NewRequest(http.MethodGet, args[0], nil)
	if err != nil {
		return err
	}
	if len(args) == 3 {
		token, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		ca, err := os.ReadFile(args[2])
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	os.Stdout.Write(body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", args[0], resp.Status)
	}
	return nil
}

// admissionReview is the part of admission.k8s.io/v1 AdmissionReview used.
type admissionReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID    string `json:"uid"`
		Object struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		} `json:"object"`
	} `json:"request,omitempty"`
	Response *admissionResponse `json:"response,omitempty"`
}

type admissionResponse struct {
	UID     string `json:"uid"`
	Allowed bool   `json:"allowed"`
	Status  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"status,omitempty"`
}

func webhook(addr, cert, key string) error {
	http.HandleFunc("/validate", func(w http.ResponseWriter, r *http.Request) {
		var review admissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		resp := &admissionResponse{UID: review.Request.UID, Allowed: true}
		if review.Request.Object.Metadata.Labels["deny"] == "true" {
			resp.Allowed = false
			resp.Status = &struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}{403, "netcheck webhook denies objects labelled deny=true"}
		}
		review.Request, review.Response = nil, resp
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(review)
	})
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second}
	return srv.ListenAndServeTLS(cert, key)
}

// tap creates a persistent tap device and turns on IPv4 forwarding: the two
// privileged things the runner pod does before it starts QEMU.
func tap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		return fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETPERSIST, 1); errno != 0 {
		return fmt.Errorf("TUNSETPERSIST %s: %w", name, errno)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("set net.ipv4.ip_forward: %w", err)
	}
	if _, err := os.Stat("/sys/class/net/" + name); err != nil {
		return fmt.Errorf("tap %s not visible: %w", name, err)
	}
	fmt.Printf("tap %s created; ip_forward=1\n", name)
	return nil
}
