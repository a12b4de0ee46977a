package fw

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// StateFile is the name of the persisted rule set under the state dir.
const StateFile = "fw.json"

// LoadState reads the rule set persisted in dir; a missing file is an
// empty rule set.
func LoadState(dir string) (RuleSet, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return RuleSet{}, nil
	}
	if err != nil {
		return RuleSet{}, fmt.Errorf("reading firewall state: %w", err)
	}
	var s RuleSet
	if err := json.Unmarshal(b, &s); err != nil {
		return RuleSet{}, fmt.Errorf("decoding %s: %w", StateFile, err)
	}
	if err := s.Validate(); err != nil {
		return RuleSet{}, fmt.Errorf("validating %s: %w", StateFile, err)
	}
	return s, nil
}

// SaveState writes s to dir atomically: a reader (or a crash) sees the old
// file or the new one, never a mix.
func SaveState(dir string, s RuleSet) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding firewall state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	f, err := os.CreateTemp(dir, StateFile+".tmp*")
	if err != nil {
		return fmt.Errorf("writing firewall state: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("writing firewall state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing firewall state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing firewall state: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("replacing firewall state: %w", err)
	}
	return nil
}
