package mirror

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Limits on the identifying fields of a command. They keep the echo of an id
// in a reply, and a command name in a log line, small.
const (
	maxIDLen      = 256
	maxCommandLen = 256
)

// The structs below are what the server writes, one per message type. Each
// has exactly the fields the AsyncAPI document gives that type.

type replyWire struct {
	Type   string          `json:"type"`
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

type snapshotWire struct {
	Type    string   `json:"type"`
	Mirror  string   `json:"mirror"`
	Epoch   string   `json:"epoch"`
	Seq     uint64   `json:"seq"`
	Objects []Object `json:"objects"`
}

type snapshotEndWire struct {
	Type      string `json:"type"`
	Mirror    string `json:"mirror"`
	Epoch     string `json:"epoch"`
	Seq       uint64 `json:"seq"`
	Count     int    `json:"count"`
	Recovered bool   `json:"recovered"`
}

// deltaWire carries the epoch too, so that the (epoch, seq) of the last delta
// a client applied is its resume token without further bookkeeping.
type deltaWire struct {
	Type   string          `json:"type"`
	Mirror string          `json:"mirror"`
	Epoch  string          `json:"epoch"`
	Seq    uint64          `json:"seq"`
	Op     string          `json:"op"`
	Key    string          `json:"key,omitempty"`
	Cause  string          `json:"cause,omitempty"`
	Time   string          `json:"time"`
	Object json.RawMessage `json:"object,omitempty"`
}

type laggedWire struct {
	Type   string `json:"type"`
	Mirror string `json:"mirror"`
	Resume string `json:"resume"`
}

type errorWire struct {
	Type  string `json:"type"`
	Error *Error `json:"error"`
}

// marshalWire encodes one of the wire structs above. They hold only strings,
// numbers and json.RawMessage values that came out of json.Marshal, so an
// error here is a bug in this package, not bad input.
func marshalWire(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("mirror: encoding %T: %v", v, err))
	}
	return b
}

func encodeReply(id string, result json.RawMessage) []byte {
	if result == nil {
		result = json.RawMessage("null")
	}
	return marshalWire(replyWire{Type: TypeReply, ID: id, OK: true, Result: result})
}

func encodeReplyError(id string, e *Error) []byte {
	return marshalWire(replyWire{Type: TypeReply, ID: id, OK: false, Error: e})
}

func encodeError(e *Error) []byte {
	return marshalWire(errorWire{Type: TypeError, Error: e})
}

// DecodeCommand parses one message sent by a client. Anything that is not a
// JSON object with exactly the fields type ("command"), id (a non-empty
// string), command (a non-empty string) and optionally args (an object or
// null) is rejected with an *Error of code CodeBadRequest.
//
// When the message is rejected but carries a readable string id, the
// returned Message has that ID set so that the server can answer with a reply
// the client will match, instead of an anonymous error message.
func DecodeCommand(data []byte) (Message, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return Message{}, Errorf(CodeBadRequest, "a message must be a JSON object")
	}
	// The id first: every later rejection can then be a reply to it.
	var id string
	idErr := decodeString(fields, "id", &id, maxIDLen)
	fail := func(format string, args ...any) (Message, error) {
		return Message{ID: id}, Errorf(CodeBadRequest, format, args...)
	}
	for k := range fields {
		switch k {
		case "type", "id", "command", "args":
		default:
			if len(k) > 64 || !utf8.ValidString(k) {
				return fail("unknown field")
			}
			return fail("unknown field %q", k)
		}
	}
	if idErr != nil {
		return fail("%v", idErr)
	}
	m := Message{ID: id}
	if err := decodeString(fields, "type", &m.Type, maxCommandLen); err != nil {
		return fail("%v", err)
	}
	if m.Type != TypeCommand {
		return fail("type must be %q", TypeCommand)
	}
	if err := decodeString(fields, "command", &m.Command, maxCommandLen); err != nil {
		return fail("%v", err)
	}
	if raw, ok := fields["args"]; ok {
		trimmed := bytes.TrimSpace(raw)
		switch {
		case bytes.Equal(trimmed, []byte("null")):
		case len(trimmed) > 0 && trimmed[0] == '{':
			m.Args = raw
		default:
			return fail("args must be an object")
		}
	}
	return m, nil
}

// decodeString reads the required, non-empty string field name of at most
// max bytes.
func decodeString(fields map[string]json.RawMessage, name string, dst *string, max int) error {
	raw, ok := fields[name]
	if !ok {
		return fmt.Errorf("%s is required", name)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("%s must be a string", name)
	}
	if s == "" {
		return fmt.Errorf("%s must not be empty", name)
	}
	if len(s) > max {
		return fmt.Errorf("%s is longer than %d bytes", name, max)
	}
	*dst = s
	return nil
}

// Decode decodes the command's arguments into v strictly: unknown fields and
// trailing data are errors. Absent or null arguments decode as {}, so a
// handler with only optional arguments can always call Decode. Errors are
// *Error with code CodeBadRequest.
func (r *Request) Decode(v any) error {
	data := bytes.TrimSpace(r.Args)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		data = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeBadRequest, "%s: arguments: %v", r.Command, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(CodeBadRequest, "%s: arguments: trailing data after the object", r.Command)
	}
	return nil
}
