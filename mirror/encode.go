package mirror

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendDelta encodes a delta message without reflection. Every published
// change goes through here once (subscribers share the bytes), and obj is
// already compact JSON from json.Marshal, so re-encoding it through a
// json.RawMessage field (which validates and compacts it again) would more
// than double the cost of a publish. Field names and order match deltaWire.
func appendDelta(b []byte, mirror, epoch string, seq uint64, op, key, cause string, t time.Time, obj json.RawMessage) []byte {
	b = append(b, `{"type":"delta","mirror":`...)
	b = appendString(b, mirror)
	b = append(b, `,"epoch":`...)
	b = appendString(b, epoch)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"op":`...)
	b = appendString(b, op)
	if key != "" {
		b = append(b, `,"key":`...)
		b = appendString(b, key)
	}
	if cause != "" {
		b = append(b, `,"cause":`...)
		b = appendString(b, cause)
	}
	b = append(b, `,"time":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if len(obj) > 0 {
		b = append(b, `,"object":`...)
		b = append(b, obj...)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string with the escaping encoding/json
// uses: quotes, backslashes and control characters escaped, <, > and &
// escaped for HTML safety, invalid UTF-8 replaced by U+FFFD, and U+2028 and
// U+2029 escaped for JavaScript.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
