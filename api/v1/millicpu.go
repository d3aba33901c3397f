package v1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"k8s.io/apimachinery/pkg/api/resource"
)

// MilliCPU is an amount of vCPU in thousandths: 250 is a quarter of a vCPU,
// 2000 is two.
//
// On the wire it is a number when it is a whole number of vCPUs (2) and a
// milli string otherwise ("250m"), as NeonVM writes it. It reads anything a
// Kubernetes quantity accepts for CPU: 1, 0.25, "250m", "1.5", "2"; a value
// finer than a milli-CPU is rounded up.
//
// +kubebuilder:validation:XIntOrString
// +kubebuilder:validation:Type=""
// +kubebuilder:validation:Format=""
// +kubebuilder:validation:Pattern=`^[0-9]+((\.[0-9]*)?|m)`
type MilliCPU uint32

// MaxMilliCPU is the largest amount a MilliCPU holds.
const MaxMilliCPU = MilliCPU(math.MaxUint32)

// MilliCPUFromQuantity converts a Kubernetes quantity, rounding a fraction of a
// milli-CPU up. It fails for negative values and values past MaxMilliCPU.
func MilliCPUFromQuantity(q resource.Quantity) (MilliCPU, error) {
	if q.Sign() < 0 {
		return 0, fmt.Errorf("cpu amount %s is negative", q.String())
	}
	m := q.MilliValue()
	if m > int64(MaxMilliCPU) || m < 0 {
		return 0, fmt.Errorf("cpu amount %s is too large", q.String())
	}
	return MilliCPU(m), nil
}

// ParseMilliCPU parses a CPU amount written as a Kubernetes quantity
// ("250m", "0.25", "2").
func ParseMilliCPU(s string) (MilliCPU, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("parse cpu amount %q: %w", s, err)
	}
	return MilliCPUFromQuantity(q)
}

// RoundedUp is the number of whole vCPUs needed to hold m: ceil(m/1000).
func (m MilliCPU) RoundedUp() uint32 {
	return uint32((uint64(m) + 999) / 1000)
}

// IsWhole reports whether m is a whole number of vCPUs.
func (m MilliCPU) IsWhole() bool { return m%1000 == 0 }

// AsFloat64 is m in vCPUs.
func (m MilliCPU) AsFloat64() float64 { return float64(m) / 1000 }

// ToQuantity is m as a Kubernetes quantity.
func (m MilliCPU) ToQuantity() *resource.Quantity {
	return resource.NewMilliQuantity(int64(m), resource.DecimalSI)
}

// String writes m the way it appears on the wire, without quotes: "2" for
// whole vCPUs, "250m" otherwise.
func (m MilliCPU) String() string {
	if m.IsWhole() {
		return strconv.FormatUint(uint64(m/1000), 10)
	}
	return strconv.FormatUint(uint64(m), 10) + "m"
}

// MarshalJSON writes a whole number of vCPUs as a JSON number and anything
// else as a milli string.
func (m MilliCPU) MarshalJSON() ([]byte, error) {
	if m.IsWhole() {
		return []byte(m.String()), nil
	}
	return []byte(`"` + m.String() + `"`), nil
}

// UnmarshalJSON reads a JSON number or string holding a CPU quantity. null
// leaves m unchanged, as encoding/json does for other types.
func (m *MilliCPU) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		return nil
	}
	var text string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &text); err != nil {
			return fmt.Errorf("cpu amount: %w", err)
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return fmt.Errorf("cpu amount must be a number or a string, got %s", data)
		}
		text = n.String()
	}
	v, err := ParseMilliCPU(text)
	if err != nil {
		return err
	}
	*m = v
	return nil
}
