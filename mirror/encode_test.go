package mirror

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestAppendDeltaMatchesEncodingJSON: the hand-written encoder produces
// exactly what json.Marshal of deltaWire produces, for awkward strings too.
func TestAppendDeltaMatchesEncodingJSON(t *testing.T) {
	tm := time.Date(2026, 11, 24, 21, 0, 0, 123456789, time.UTC)
	for _, key := range []string{"", "1234", `tcp 127.0.0.1:80->[::1]:5`, "quote\" back\\slash", "ctl\x00\x01\x1f\n\r\t",
		"html <&>", "utf8 é 漢字 🙂", "bad \xff\xfe utf8", "line\u2028sep\u2029", "\x7f del"} {
		obj := json.RawMessage(`{"a":1,"b":"x"}`)
		want, err := json.Marshal(deltaWire{Type: TypeDelta, Mirror: "m", Epoch: "e1", Seq: 42, Op: OpUpsert,
			Key: key, Cause: key, Time: tm.Format(time.RFC3339Nano), Object: obj})
		if err != nil {
			t.Fatal(err)
		}
		got := appendDelta(nil, "m", "e1", 42, OpUpsert, key, key, tm, obj)
		if !bytes.Equal(got, want) {
			t.Errorf("key %q:\n got %s\nwant %s", key, got, want)
		}
	}
	// Without key, cause and object (a delete has no object).
	want, _ := json.Marshal(deltaWire{Type: TypeDelta, Mirror: "m", Epoch: "e", Seq: 1, Op: OpDelete, Time: tm.Format(time.RFC3339Nano)})
	if got := appendDelta(nil, "m", "e", 1, OpDelete, "", "", tm, nil); !bytes.Equal(got, want) {
		t.Errorf("bare delta:\n got %s\nwant %s", got, want)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\", "\xff", "\u2028", "<&>", "漢"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

// BenchmarkEncodeDelta compares the hand-written delta encoder with
// json.Marshal of the same message, side by side.
func BenchmarkEncodeDelta(b *testing.B) {
	obj := json.RawMessage(`{"kind":"drop","time":"2026-11-24T21:00:00.123456789Z","reason":"NO_SOCKET","reason_code":3,"location":"0xffffffff81a0b0c0","proto":"udp","src":"127.0.0.1:40000","dst":"127.0.0.1:9","ifindex":1,"netns":4026531840,"pid":0,"comm":"swapper/0"}`)
	tm := time.Now()
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			appendDelta(nil, "events", "9f3a", 123456, OpEvent, "123456", "drop", tm, obj)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(deltaWire{Type: TypeDelta, Mirror: "events", Epoch: "9f3a", Seq: 123456, Op: OpEvent,
				Key: "123456", Cause: "drop", Time: tm.UTC().Format(time.RFC3339Nano), Object: obj})
		}
	})
}
