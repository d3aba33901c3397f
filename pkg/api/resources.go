// Package api holds the types vmscale's components exchange over the wire
// with each other and with Neon's: the Resources pair, the agent↔scheduler
// plugin messages, and the agent↔vm-monitor messages. Their JSON is fixed by
// Neon's autoscaling (spec/protocols.md) and checked against Neon's own
// output in testdata/compat/vectors.
package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"k8s.io/apimachinery/pkg/api/resource"

	vmv1 "github.com/vmscale/vmscale/api/v1"
)

// Bytes is an amount of memory in bytes.
//
// On the wire it is a JSON number below 1024 and a binary-SI quantity string
// from 1024 on ("1Gi", or plain digits such as "1536" when the amount is not
// a whole number of any binary unit). It reads a number or any Kubernetes
// quantity; null leaves it unchanged.
type Bytes uint64

// MarshalJSON writes b as Neon does.
func (b Bytes) MarshalJSON() ([]byte, error) {
	if b < 1024 {
		return strconv.AppendUint(nil, uint64(b), 10), nil
	}
	if b > math.MaxInt64 {
		return nil, fmt.Errorf("memory amount %d bytes is too large", uint64(b))
	}
	q := resource.NewQuantity(int64(b), resource.BinarySI)
	return []byte(`"` + q.String() + `"`), nil
}

// UnmarshalJSON reads a JSON number or a quantity string.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		return nil
	}
	var text string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &text); err != nil {
			return fmt.Errorf("memory amount: %w", err)
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return fmt.Errorf("memory amount must be a number or a string, got %s", truncate(data))
		}
		text = n.String()
	}
	q, err := resource.ParseQuantity(text)
	if err != nil {
		return fmt.Errorf("parse memory amount %q: %w", text, err)
	}
	v, err := BytesFromQuantity(q)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// BytesFromQuantity converts a Kubernetes quantity, rounding a fraction of a
// byte up. It fails for negative values and values that overflow int64.
func BytesFromQuantity(q resource.Quantity) (Bytes, error) {
	if q.Sign() < 0 {
		return 0, fmt.Errorf("memory amount %s is negative", q.String())
	}
	v, ok := q.AsInt64()
	if !ok {
		// AsInt64 fails for fractions too; Value rounds them up, but
		// saturates silently on overflow, so compare against the cap.
		if q.Cmp(*resource.NewQuantity(math.MaxInt64, resource.BinarySI)) >= 0 {
			return 0, fmt.Errorf("memory amount %s is too large", q.String())
		}
		v = q.Value()
	}
	return Bytes(v), nil
}

// String is b as a quantity ("1Gi", "512").
func (b Bytes) String() string {
	if b > math.MaxInt64 {
		return strconv.FormatUint(uint64(b), 10)
	}
	return resource.NewQuantity(int64(b), resource.BinarySI).String()
}

func truncate(data []byte) string {
	if len(data) > 64 {
		return string(data[:64]) + "…"
	}
	return string(data)
}

// Resources is an amount of vCPU and memory: a VM's size, a compute unit, a
// request or a permit. Keys are "vCPUs" and "mem".
type Resources struct {
	VCPU vmv1.MilliCPU `json:"vCPUs"`
	Mem  Bytes         `json:"mem"`
}

// IsZero reports whether both fields are zero.
func (r Resources) IsZero() bool { return r.VCPU == 0 && r.Mem == 0 }

// HasZero reports whether either field is zero.
func (r Resources) HasZero() bool { return r.VCPU == 0 || r.Mem == 0 }

// FitsIn reports whether r is at most other in every field.
func (r Resources) FitsIn(other Resources) bool {
	return r.VCPU <= other.VCPU && r.Mem <= other.Mem
}

// AnyAbove reports whether some field of r is greater than other's.
func (r Resources) AnyAbove(other Resources) bool { return !r.FitsIn(other) }

// String is r as JSON-ish text for logs.
func (r Resources) String() string {
	return fmt.Sprintf("{vCPUs:%s mem:%s}", r.VCPU, r.Mem)
}
