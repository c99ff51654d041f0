// Package pebbledb opens the embedded Pebble database that backs Herald's
// embedded engines: the store (pkg/store/pebblestore) and the push log
// (pkg/pushlog/pebblelog).
//
// # One database, one WAL, on purpose
//
// In the all-in-one process the store and the log share ONE *pebble.DB.
// Pebble appends every write of a database to a single write-ahead log, in
// commit order, and recovers a prefix of that log after a crash. So if a
// later write survives a SIGKILL, every earlier write survived too. Herald
// relies on this invariant: the store writes with pebble.NoSync (an inbox
// entry, a status mark) and the log's offset commit that depends on them is
// written afterwards with pebble.Sync; when the commit is durable, so is
// everything it depends on. Splitting the store and the log into two
// databases would break this and lose messages on a crash.
//
// # Key space
//
// The engines share the key space by their first byte:
//
//	'l'  pushlog (pebblelog)
//	's'  store (pebblestore)
//
// Each engine documents its own layout below its prefix.
//
// # Ownership
//
// The caller of Open owns the database and closes it, after closing every
// store and log built on it: Pebble panics on use of a closed database.
package pebbledb

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// Key-space prefixes of the engines sharing one database.
const (
	PrefixLog   byte = 'l'
	PrefixStore byte = 's'
)

// Open opens (creating if needed) the database in dir with options suited
// to a push server: modest memtables (the data is small records, written
// often) and Pebble's log lines routed to logger.
func Open(dir string, logger *slog.Logger) (*pebble.DB, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := &pebble.Options{
		FormatMajorVersion: pebble.FormatNewest,
		// 16 MiB memtables: a few seconds of a busy push log, a small
		// resident cost on an idle one (Pebble starts with 256 KiB and grows).
		MemTableSize: 16 << 20,
		// Keep the WAL's background syncs small so a synced append never
		// waits behind megabytes of unsynced store writes.
		WALBytesPerSync: 512 << 10,
		MaxOpenFiles:    1000,
		// 64 MiB of block cache (Pebble's default is 8): the store's point
		// reads (status rows, inbox entries, devices) share the cache with
		// the push log's scans, and a miss means decompressing index and
		// data blocks again.
		CacheSize: 64 << 20,
		Logger:    pebbleLogger{logger: logger.With("component", "pebble")},
	}
	// Bloom filters on every level (L1+ inherit L0's): most point reads of
	// a push server ask for keys that are not there (an acked message's
	// inbox entry, a first idempotency key, a status row), and without a
	// filter each such read searches the index of every overlapping table.
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("pebbledb: open %s: %w", dir, err)
	}
	return db, nil
}

// pebbleLogger adapts slog to Pebble's printf-style logger. Pebble's messages
// are preformatted, so they go in the "detail" attribute of a fixed message.
type pebbleLogger struct {
	logger *slog.Logger
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.logger.Info("pebble info", "detail", fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.logger.Error("pebble error", "detail", fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble when it cannot continue without risking the
// data (e.g. a failed WAL sync); Pebble's contract is that it does not
// return. Like Pebble's default logger it exits the process: a panic could be
// recovered by a server's handler and let writes continue on a broken
// database, which would lose accepted messages.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.logger.Error("pebble fatal error, exiting", "detail", fmt.Sprintf(format, args...))
	os.Exit(70) // EX_SOFTWARE
}
