package statefile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestSaveReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "x.json")
	for _, v := range []map[string]int{{"a": 1}, {"a": 2, "b": 3}} {
		if err := Save(path, v); err != nil {
			t.Fatal(err)
		}
		var got map[string]int
		b, err := os.ReadFile(path)
		if err != nil || json.Unmarshal(b, &got) != nil || len(got) != len(v) || got["a"] != v["a"] {
			t.Fatalf("after Save(%v): %s %v", v, b, err)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
	if err := Save(path, func() {}); err == nil {
		t.Error("an unencodable value was saved")
	}
}
