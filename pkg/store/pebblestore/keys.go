package pebblestore

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/heraldpush/herald/pkg/pebbledb"
)

// Key layout. Every key starts with pebbledb.PrefixStore and a table byte.
// A "comp" is a uvarint length followed by the bytes, so a prefix of
// components identifies exactly one tuple; a last component is written raw
// (it sorts as bytes, which is what message ids need).
//
//	s a <appID>                               -> app (JSON)
//	s k <appKey>                              -> appID
//	s d comp(appID) comp(deviceID)            -> device (JSON)
//	s i comp(appID) comp(deviceID) <msgID>    -> inbox entry (see encodeEntry)
//	s c comp(appID) comp(deviceID) <collapse> -> msgID holding the collapse id
//	s x be64(expires) comp(appID) comp(deviceID) <msgID> -> "" (inbox expiry index)
//	s m <msgID>                               -> message meta (JSON)
//	s t comp(msgID) <deviceID>                -> one byte: store.DeliveryState
//	s p comp(appID) <idemKey>                 -> be64(expires, 0 = never) msgID
//	s y be64(expires) comp(appID) <idemKey>   -> "" (claim expiry index)
//
// Added for issue #4 (new tables only; the records above gained optional
// JSON fields and still decode when they lack them):
//
//	s l comp(appID) comp(alias) <deviceID>    -> "" (alias index)
//	s o comp(appID) <topic>                   -> "" (topic known to the app)
//	s b comp(appID) <deviceID>                -> be32(badge)
//	s q be32(yyyymmdd) comp(appID) <deviceID> -> be64(count) (daily quota)
//	s g comp(appID) <msgID>                   -> broadcast (see encodeBroadcast)
//	s e be64(expires) comp(appID) <msgID>     -> "" (broadcast expiry index)
//	s h be64(due) <msgID>                     -> comp(appID) body (schedule)
//	s j <msgID>                               -> be64(due) (schedule by id)
//	s z comp(appID) be64(hour)                -> be64 sent, delivered, clicked
//	s u <msgID>                               -> one byte: store.MessageState
//	s n <msgID>                               -> be64 targeted, delivered, clicked
//
// A message without a state key (written before issue #4) is active.
// Times in keys and values are Unix nanoseconds; 0 means "no expiry".
const (
	tableApp        = 'a'
	tableAppKey     = 'k'
	tableDevice     = 'd'
	tableInbox      = 'i'
	tableCollapse   = 'c'
	tableExpiry     = 'x'
	tableMessage    = 'm'
	tableTarget     = 't'
	tableClaim      = 'p'
	tableClaimIndex = 'y'

	tableAlias          = 'l'
	tableTopic          = 'o'
	tableBadge          = 'b'
	tableQuota          = 'q'
	tableBroadcast      = 'g'
	tableBroadcastIndex = 'e'
	tableSchedule       = 'h'
	tableScheduleByID   = 'j'
	tableStats          = 'z'
	tableMessageState   = 'u'
	tableCounters       = 'n'
)

func tableKey(table byte, n int) []byte {
	b := make([]byte, 0, 2+n)
	return append(b, pebbledb.PrefixStore, table)
}

func appendComp(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readComp splits one comp off the front of b.
func readComp(b []byte) (string, []byte, error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return "", nil, fmt.Errorf("pebblestore: corrupt key component")
	}
	return string(b[w : w+int(n)]), b[w+int(n):], nil
}

func appKey(id string) []byte {
	return append(tableKey(tableApp, len(id)), id...)
}

func appKeyIndex(key string) []byte {
	return append(tableKey(tableAppKey, len(key)), key...)
}

func deviceKey(appID, deviceID string) []byte {
	b := tableKey(tableDevice, len(appID)+len(deviceID)+4)
	return appendComp(appendComp(b, appID), deviceID)
}

// inboxPrefix is the prefix of every inbox entry of one device.
func inboxPrefix(appID, deviceID string, extra int) []byte {
	b := tableKey(tableInbox, len(appID)+len(deviceID)+4+extra)
	return appendComp(appendComp(b, appID), deviceID)
}

func inboxKey(appID, deviceID, msgID string) []byte {
	return append(inboxPrefix(appID, deviceID, len(msgID)), msgID...)
}

func collapsePrefix(appID, deviceID string, extra int) []byte {
	b := tableKey(tableCollapse, len(appID)+len(deviceID)+4+extra)
	return appendComp(appendComp(b, appID), deviceID)
}

func collapseKey(appID, deviceID, collapseID string) []byte {
	return append(collapsePrefix(appID, deviceID, len(collapseID)), collapseID...)
}

func expiryKey(expires int64, appID, deviceID, msgID string) []byte {
	b := tableKey(tableExpiry, 8+len(appID)+len(deviceID)+len(msgID)+4)
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	b = appendComp(appendComp(b, appID), deviceID)
	return append(b, msgID...)
}

// parseExpiryKey is the inverse of expiryKey.
func parseExpiryKey(k []byte) (expires int64, appID, deviceID, msgID string, err error) {
	if len(k) < 10 {
		return 0, "", "", "", fmt.Errorf("pebblestore: corrupt expiry key")
	}
	expires = int64(binary.BigEndian.Uint64(k[2:10]))
	rest := k[10:]
	if appID, rest, err = readComp(rest); err != nil {
		return 0, "", "", "", err
	}
	if deviceID, rest, err = readComp(rest); err != nil {
		return 0, "", "", "", err
	}
	return expires, appID, deviceID, string(rest), nil
}

func messageKey(msgID string) []byte {
	return append(tableKey(tableMessage, len(msgID)), msgID...)
}

func targetPrefix(msgID string, extra int) []byte {
	return appendComp(tableKey(tableTarget, len(msgID)+2+extra), msgID)
}

func targetKey(msgID, deviceID string) []byte {
	return append(targetPrefix(msgID, len(deviceID)), deviceID...)
}

func claimKey(appID, key string) []byte {
	b := tableKey(tableClaim, len(appID)+len(key)+2)
	return append(appendComp(b, appID), key...)
}

func claimIndexKey(expires int64, appID, key string) []byte {
	b := tableKey(tableClaimIndex, 8+len(appID)+len(key)+2)
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	return append(appendComp(b, appID), key...)
}

func parseClaimIndexKey(k []byte) (expires int64, appID, key string, err error) {
	if len(k) < 10 {
		return 0, "", "", fmt.Errorf("pebblestore: corrupt claim index key")
	}
	expires = int64(binary.BigEndian.Uint64(k[2:10]))
	appID, rest, err := readComp(k[10:])
	if err != nil {
		return 0, "", "", err
	}
	return expires, appID, string(rest), nil
}

func aliasPrefix(appID, alias string, extra int) []byte {
	b := tableKey(tableAlias, len(appID)+len(alias)+4+extra)
	return appendComp(appendComp(b, appID), alias)
}

func aliasKey(appID, alias, deviceID string) []byte {
	return append(aliasPrefix(appID, alias, len(deviceID)), deviceID...)
}

func topicKey(appID, topic string) []byte {
	b := tableKey(tableTopic, len(appID)+len(topic)+2)
	return append(appendComp(b, appID), topic...)
}

func badgeKey(appID, deviceID string) []byte {
	b := tableKey(tableBadge, len(appID)+len(deviceID)+2)
	return append(appendComp(b, appID), deviceID...)
}

// quotaDate is the UTC date of t as yyyymmdd (sorts like time).
func quotaDate(t time.Time) uint32 {
	y, m, d := t.UTC().Date()
	if y < 0 {
		return 0
	}
	return uint32(y)*10000 + uint32(m)*100 + uint32(d)
}

func quotaDatePrefix(date uint32) []byte {
	return binary.BigEndian.AppendUint32(tableKey(tableQuota, 4), date)
}

func quotaKey(date uint32, appID, deviceID string) []byte {
	b := tableKey(tableQuota, 4+len(appID)+len(deviceID)+2)
	b = binary.BigEndian.AppendUint32(b, date)
	return append(appendComp(b, appID), deviceID...)
}

func broadcastPrefix(appID string, extra int) []byte {
	return appendComp(tableKey(tableBroadcast, len(appID)+2+extra), appID)
}

func broadcastKey(appID, msgID string) []byte {
	return append(broadcastPrefix(appID, len(msgID)), msgID...)
}

func broadcastIndexKey(expires int64, appID, msgID string) []byte {
	b := tableKey(tableBroadcastIndex, 8+len(appID)+len(msgID)+2)
	b = binary.BigEndian.AppendUint64(b, uint64(expires))
	return append(appendComp(b, appID), msgID...)
}

func parseBroadcastIndexKey(k []byte) (expires int64, appID, msgID string, err error) {
	if len(k) < 10 {
		return 0, "", "", fmt.Errorf("pebblestore: corrupt broadcast index key")
	}
	expires = int64(binary.BigEndian.Uint64(k[2:10]))
	appID, rest, err := readComp(k[10:])
	if err != nil {
		return 0, "", "", err
	}
	return expires, appID, string(rest), nil
}

func scheduleKey(due int64, msgID string) []byte {
	b := tableKey(tableSchedule, 8+len(msgID))
	b = binary.BigEndian.AppendUint64(b, uint64(due))
	return append(b, msgID...)
}

func scheduleByIDKey(msgID string) []byte {
	return append(tableKey(tableScheduleByID, len(msgID)), msgID...)
}

func statsPrefix(appID string) []byte {
	return appendComp(tableKey(tableStats, len(appID)+2+8), appID)
}

func statsKey(appID string, hour int64) []byte {
	return binary.BigEndian.AppendUint64(statsPrefix(appID), uint64(hour))
}

func messageStateKey(msgID string) []byte {
	return append(tableKey(tableMessageState, len(msgID)), msgID...)
}

func countersKey(msgID string) []byte {
	return append(tableKey(tableCounters, len(msgID)), msgID...)
}

// upperBound returns the smallest key greater than every key with prefix p.
func upperBound(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// nanos encodes t as Unix nanoseconds, 0 for the zero time. Times before
// 1970 become 1 so they still count as set (and already past); times past
// 2262 become the largest value.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	if t.After(maxNanosTime) {
		return math.MaxInt64
	}
	n := t.UnixNano()
	if n <= 0 {
		return 1
	}
	return n
}

// maxNanosTime is about the last instant UnixNano can represent (year 2262).
var maxNanosTime = time.Unix(0, math.MaxInt64)

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
