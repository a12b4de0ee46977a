package fw

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qbo/qbo/internal/statefile"
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
	return statefile.Save(filepath.Join(dir, StateFile), s)
}
