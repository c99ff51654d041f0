package pebbledb_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldpush/herald/pkg/pebbledb"
)

func TestOpenPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pebble") // created by Open
	db, err := pebbledb.Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("s-key"), []byte("value"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("l-key"), []byte("synced"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = pebbledb.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for k, want := range map[string]string{"s-key": "value", "l-key": "synced"} {
		v, closer, err := db.Get([]byte(k))
		if err != nil {
			t.Fatalf("Get(%s) after reopen: %v", k, err)
		}
		if string(v) != want {
			t.Errorf("Get(%s) = %q, want %q", k, v, want)
		}
		closer.Close()
	}
}

func TestOpenFailsOnAFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	if db, err := pebbledb.Open(file, nil); err == nil {
		db.Close()
		t.Fatal("Open on a regular file succeeded")
	}
}
