// Package sqlutil holds helpers shared by the SQL stores: time columns,
// prefix ranges and the opaque list cursor.
package sqlutil

import (
	"encoding/base64"
	"strings"
	"time"

	broker "github.com/sandbox-broker/broker"
)

// Unix converts t to Unix seconds, 0 for the zero time.
func Unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// Time converts Unix seconds to a UTC time, the zero time for 0.
func Time(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// PrefixUpperBound returns the smallest string greater than every string
// starting with p in byte order, and false when there is none (p empty or
// all 0xFF bytes). Names in [p, bound) are exactly those starting with p.
func PrefixUpperBound(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xFF {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

const cursorPrefix = "v1:"

// EncodeCursor turns the last listed id into an opaque cursor.
func EncodeCursor(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + lastID))
}

// DecodeCursor returns the id a cursor continues after. Returns EINVALID
// for anything EncodeCursor did not produce.
func DecodeCursor(c string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(raw), cursorPrefix) {
		return "", broker.Errorf(broker.EINVALID, "cursor is not valid; pass the cursor of the previous page unchanged")
	}
	return strings.TrimPrefix(string(raw), cursorPrefix), nil
}
