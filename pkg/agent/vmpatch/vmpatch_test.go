package vmpatch

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/api"
)

const vectors = "../../../testdata/compat/vectors/vm-spec"

// TestPatchVectors: the body equals Neon's byte for byte.
func TestPatchVectors(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(vectors, "patch-*.request.json"))
	if len(files) == 0 {
		t.Fatal("no patch vectors")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".request.json"), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var v struct {
				Body           string                `json:"body"`
				ContentType    string                `json:"contentType"`
				MemSlotSize    api.Bytes             `json:"memSlotSize"`
				Target         api.Resources         `json:"target"`
				TargetRevision vmv1.RevisionWithTime `json:"targetRevision"`
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			got, err := Body(v.Target, v.MemSlotSize, v.TargetRevision, true)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != v.Body {
				t.Fatalf("body\n got %s\nwant %s", got, v.Body)
			}
			plain, err := os.ReadFile(strings.TrimSuffix(f, ".request.json") + ".json")
			if err != nil || string(plain) != v.Body {
				t.Fatalf("the plain vector differs from the request's body: %v", err)
			}
			if v.ContentType != "application/json-patch+json" {
				t.Fatalf("content type %s", v.ContentType)
			}
		})
	}
}

func TestPatchRejectsPartialSlots(t *testing.T) {
	if _, err := Body(api.Resources{VCPU: 250, Mem: 1536 << 20}, 1<<30, vmv1.RevisionWithTime{}, true); err == nil {
		t.Fatal("1.5 slots accepted")
	}
}

func TestPatchAddsMissingRevision(t *testing.T) {
	b, err := Body(api.Resources{VCPU: 250, Mem: 1 << 30}, 1<<30, vmv1.RevisionWithTime{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `{"op":"add","path":"/spec/targetRevision"`) {
		t.Fatalf("body %s", b)
	}
}
