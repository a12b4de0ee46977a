package mirror

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func FuzzDecodeCommand(f *testing.F) {
	for _, seed := range []string{
		`{"type":"command","id":"1","command":"watch","args":{"mirror":"processes","since":"abc:12"}}`,
		`{"type":"command","id":"2","command":"get mirrors"}`,
		`{"type":"command","id":"3","command":"get processes","args":null}`,
		`{"type":"command","id":"4","command":"status","args":{}}`,
		`{"command":"status","args":{"a":[1,{"b":"c"}]},"id":"5","type":"command"}`,
		` {"type":"command","id":"6","command":"x"} `,
		`{"type":"command","id":"7"}`,
		`{"type":"command","id":"","command":"x"}`,
		`{"type":"command","id":8,"command":"x"}`,
		`{"type":"reply","id":"9","command":"x"}`,
		`{"type":"command","id":"10","command":"x","args":[1]}`,
		`{"type":"command","id":"11","command":"x","args":"s"}`,
		`{"type":"command","id":"12","command":"x","more":1}`,
		`{"type":"command","id":"13","command":"x"} trailing`,
		`{"type":"command","id":"\ud800","command":"\u0000"}`,
		`[]`, `null`, `"x"`, `1`, ``, `{`, `not json`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeCommand(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest {
				t.Fatalf("error %v is not a bad_request *Error", err)
			}
			if m.Type != "" || m.Command != "" || m.Args != nil {
				t.Fatalf("rejected message returned fields: %+v", m)
			}
			if len(m.ID) > maxIDLen {
				t.Fatalf("id of %d bytes echoed", len(m.ID))
			}
			return
		}
		if m.Type != TypeCommand || m.ID == "" || m.Command == "" || len(m.ID) > maxIDLen || len(m.Command) > maxCommandLen {
			t.Fatalf("accepted invalid command %+v", m)
		}
		if m.Args != nil {
			if !json.Valid(m.Args) || bytes.TrimSpace(m.Args)[0] != '{' {
				t.Fatalf("accepted args %q", m.Args)
			}
		}
		// What was accepted survives a round trip through the Client's
		// encoding unchanged.
		again, err := json.Marshal(Message{Type: m.Type, ID: m.ID, Command: m.Command, Args: m.Args})
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", m, err)
		}
		m2, err := DecodeCommand(again)
		if err != nil {
			t.Fatalf("re-encoded %s rejected: %v", again, err)
		}
		if m2.Type != m.Type || m2.ID != m.ID || m2.Command != m.Command || !sameJSON(m.Args, m2.Args) {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
		// Decode never panics on what DecodeCommand accepted.
		var v map[string]any
		_ = (&Request{Command: m.Command, Args: m.Args}).Decode(&v)
	})
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
