package pebblestore

import (
	"encoding/json"
	"errors"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// errStop ends a scan early without error.
var errStop = errors.New("stop scan")

// get returns a copy of the value at k.
func (s *Store) get(k []byte) ([]byte, bool, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := slices.Clone(v)
	if out == nil {
		out = []byte{}
	}
	return out, true, closer.Close()
}

func (s *Store) exists(k []byte) (bool, error) {
	_, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

func (s *Store) getJSON(k []byte, dst any) (bool, error) {
	v, found, err := s.get(k)
	if err != nil || !found {
		return false, err
	}
	return true, json.Unmarshal(v, dst)
}

func marshal(v any) ([]byte, error) {
	return json.Marshal(v)
}

// scan calls fn for every key in [lower, upper) in order. fn may return
// errStop to end the scan; key and value are only valid during the call.
func (s *Store) scan(lower, upper []byte, fn func(k, v []byte) error) (err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			if errors.Is(err, errStop) {
				return nil
			}
			return err
		}
	}
	return it.Error()
}

// collectKeys returns copies of up to limit keys in [lower, upper).
func (s *Store) collectKeys(lower, upper []byte, limit int) ([][]byte, error) {
	var keys [][]byte
	err := s.scan(lower, upper, func(k, _ []byte) error {
		keys = append(keys, slices.Clone(k))
		if len(keys) >= limit {
			return errStop
		}
		return nil
	})
	return keys, err
}
