package runnerapi

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Environment of the runner container, set by the controller in the pod.
const (
	// EnvReceiveMigration is "true" in a migration target's runner: QEMU
	// starts waiting for an incoming migration.
	EnvReceiveMigration = "RECEIVE_MIGRATION"
	// EnvPodName is the runner pod's name (from the downward API).
	EnvPodName = "K8S_POD_NAME"
)

// maxDecodedSpec bounds a decoded spec: a gzip bomb on the command line
// must not take the runner's memory.
const maxDecodedSpec = 16 << 20

// EncodeSpec is how the controller passes a spec (or status) to the runner
// (-vmspec, -vmstatus): JSON, gzipped, base64.
func EncodeSpec(v any) (string, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("marshal: %w", err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		return "", fmt.Errorf("gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("gzip: %w", err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

// DecodeSpec reverses EncodeSpec into out.
func DecodeSpec(s string, out any) error {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not base64: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("not gzip: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(zr, maxDecodedSpec))
	if err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("not a spec: %w", err)
	}
	return nil
}
