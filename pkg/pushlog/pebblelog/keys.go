package pebblelog

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/pebbledb"
)

// Key layout. Every key starts with pebbledb.PrefixLog and a table byte;
// topic and group names are written with a one-byte length (so they are at
// most 255 bytes), partitions as big-endian uint32 and offsets as big-endian
// uint64, so a partition's records sort in offset order.
//
//	l r len topic be32(partition) be64(offset)  -> record (see encodeValue)
//	l n len topic be32(partition)               -> be64(next offset to assign)
//	l c len topic len group be32(partition)     -> be64(committed: next offset to read)
//	l w len topic be32(partition)               -> be64(low mark: records below are deleted)
//	l p                                         -> be32(partition count, fixed at first start)
const (
	tableRecord     = 'r'
	tableNext       = 'n'
	tableCommit     = 'c'
	tableLowMark    = 'w'
	tablePartitions = 'p'
)

const maxNameLen = 255

func checkName(kind, name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("pebblelog: %s name must be 1 to %d bytes: %w", kind, maxNameLen, herald.ErrInvalidArgument)
	}
	return nil
}

func topicPrefix(table byte, topic string, extra int) []byte {
	b := make([]byte, 0, 3+len(topic)+extra)
	b = append(b, pebbledb.PrefixLog, table, byte(len(topic)))
	return append(b, topic...)
}

func partitionKey(table byte, topic string, p int) []byte {
	return binary.BigEndian.AppendUint32(topicPrefix(table, topic, 4), uint32(p))
}

func recordKey(topic string, p int, off int64) []byte {
	b := topicPrefix(tableRecord, topic, 12)
	b = binary.BigEndian.AppendUint32(b, uint32(p))
	return binary.BigEndian.AppendUint64(b, uint64(off))
}

// recordOffset returns the offset at the end of a record key.
func recordOffset(k []byte) int64 {
	return int64(binary.BigEndian.Uint64(k[len(k)-8:]))
}

func commitPrefix(topic, group string) []byte {
	b := topicPrefix(tableCommit, topic, 1+len(group)+4)
	b = append(b, byte(len(group)))
	return append(b, group...)
}

func commitKey(topic, group string, p int) []byte {
	return binary.BigEndian.AppendUint32(commitPrefix(topic, group), uint32(p))
}

// parseTopicPartition parses "l <table> len topic be32(p)" keys (next and
// low-mark keys).
func parseTopicPartition(k []byte) (string, int, error) {
	if len(k) < 3 || len(k) != 3+int(k[2])+4 {
		return "", 0, errors.New("pebblelog: corrupt partition key")
	}
	topic := string(k[3 : 3+int(k[2])])
	return topic, int(binary.BigEndian.Uint32(k[len(k)-4:])), nil
}

// parseCommitKey parses a commit key into topic, group and partition.
func parseCommitKey(k []byte) (topic, group string, p int, err error) {
	if len(k) < 3 {
		return "", "", 0, errors.New("pebblelog: corrupt commit key")
	}
	tl := int(k[2])
	if len(k) < 3+tl+1 {
		return "", "", 0, errors.New("pebblelog: corrupt commit key")
	}
	topic = string(k[3 : 3+tl])
	rest := k[3+tl:]
	gl := int(rest[0])
	if len(rest) != 1+gl+4 {
		return "", "", 0, errors.New("pebblelog: corrupt commit key")
	}
	return topic, string(rest[1 : 1+gl]), int(binary.BigEndian.Uint32(rest[1+gl:])), nil
}

func be64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func readBE64(v []byte) (int64, error) {
	if len(v) != 8 {
		return 0, errors.New("pebblelog: corrupt counter")
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// Record values: version byte, be64(append time, Unix nanoseconds),
// uvarint(len key), key, value.
const valueVersion = 1

func encodeValue(appended int64, key, value []byte) []byte {
	b := make([]byte, 0, 1+8+binary.MaxVarintLen32+len(key)+len(value))
	b = append(b, valueVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(appended))
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// decodeValue parses a record value; key and value alias v.
func decodeValue(v []byte) (appended int64, key, value []byte, err error) {
	if len(v) < 10 || v[0] != valueVersion {
		return 0, nil, nil, errors.New("pebblelog: corrupt record")
	}
	appended = int64(binary.BigEndian.Uint64(v[1:9]))
	n, w := binary.Uvarint(v[9:])
	if w <= 0 || uint64(len(v)-9-w) < n {
		return 0, nil, nil, errors.New("pebblelog: corrupt record")
	}
	rest := v[9+w:]
	return appended, rest[:n], rest[n:], nil
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
	return nil
}
