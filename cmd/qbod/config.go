package main

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed defaults.yaml
var defaultConfig []byte

// defaultConfigPath is read when it exists and --config is not given.
const defaultConfigPath = "/etc/qbo/qbod.yaml"

type config struct {
	Listen   string   `yaml:"listen"`
	Socket   string   `yaml:"socket"`
	StateDir string   `yaml:"state_dir"`
	PinDir   string   `yaml:"pin_dir"`
	Uplinks  []string `yaml:"uplinks"`
	LogLevel string   `yaml:"log_level"`
	Trace    struct {
		Enabled bool          `yaml:"enabled"`
		Queue   int           `yaml:"queue"`
		Resync  time.Duration `yaml:"resync"`
	} `yaml:"trace"`
	Mirror struct {
		SendBudget int      `yaml:"send_budget"`
		Origins    []string `yaml:"origins"`
	} `yaml:"mirror"`
	Tokens  []tokenConfig `yaml:"tokens"`
	Runtime struct {
		Docker       string        `yaml:"docker"`
		Containerd   string        `yaml:"containerd"`
		Network      string        `yaml:"network"`
		Bridge       string        `yaml:"bridge"`
		Subnet       string        `yaml:"subnet"`
		ReadyTimeout time.Duration `yaml:"ready_timeout"`
		Resync       time.Duration `yaml:"resync"`
	} `yaml:"runtime"`
	LB lbConfig `yaml:"lb"`
}

type tokenConfig struct {
	Name   string   `yaml:"name"`
	Token  string   `yaml:"token"`
	Scopes []string `yaml:"scopes"`
}

// loadConfig applies the embedded defaults, then the file at path (or the
// default path when path is empty and that file exists). Unknown keys are
// errors so that a typo does not silently keep a default.
func loadConfig(path string) (*config, error) {
	var c config
	if err := decodeStrict(defaultConfig, &c); err != nil {
		return nil, fmt.Errorf("embedded defaults: %w", err)
	}
	explicit := path != ""
	if !explicit {
		path = defaultConfigPath
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decodeStrict(data, &c); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	default:
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return &c, c.validate()
}

func decodeStrict(data []byte, c *config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func (c *config) validate() error {
	if c.StateDir == "" || c.PinDir == "" {
		return errors.New("config: state_dir and pin_dir must be set")
	}
	if c.Listen == "" && c.Socket == "" {
		return errors.New("config: at least one of listen and socket must be set")
	}
	if c.Trace.Queue < 0 || c.Mirror.SendBudget < 0 {
		return errors.New("config: queue sizes must not be negative")
	}
	for _, t := range c.Tokens {
		if t.Name == "" || len(t.Token) < 16 {
			return fmt.Errorf("config: token %q needs a name and at least 16 characters", t.Name)
		}
	}
	return nil
}
