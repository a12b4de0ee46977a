package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// DrainMessages reads a dockerd JSON message stream (the body of an image
// import or load) to its end and returns the first error it reports, and the
// status lines (e.g. "Loaded image: busybox:latest").
func DrainMessages(r io.Reader) ([]string, error) {
	dec := json.NewDecoder(r)
	var lines []string
	for {
		var m struct {
			Stream      string `json:"stream"`
			Status      string `json:"status"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return lines, nil
			}
			return lines, fmt.Errorf("reading engine messages: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return lines, errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return lines, errors.New(m.Error)
		}
		for _, s := range []string{m.Stream, m.Status} {
			if s = strings.TrimSpace(s); s != "" {
				lines = append(lines, s)
			}
		}
	}
}
