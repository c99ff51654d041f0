package herald

import (
	"fmt"
	"slices"
	"testing"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func groupPushFrame(t testing.TB, id string) []byte {
	t.Helper()
	b, err := frame.AppendMessage(nil, frame.TypePush, &devicev1.Push{
		MessageId:    id,
		Kind:         devicev1.Kind_KIND_NOTIFICATION,
		Notification: &devicev1.Notification{Title: "t-" + id, Badge: -1},
		Group:        true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// received collects n messages' ids.
func (tc *testClient) received(t testing.TB, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		ids = append(ids, tc.message(t).ID)
	}
	return ids
}

func TestBroadcastCursor(t *testing.T) {
	p := newPeer(t)
	cfg := testConfig(p.addr())
	cfg.ResumeCursor, cfg.BroadcastCursor = "u0", "g0"
	tc := startClient(t, cfg)
	pc := p.accept(t)
	if c := pc.handshake(30); c.GetResumeCursor() != "u0" || c.GetBroadcastCursor() != "g0" {
		t.Fatalf("CONNECT cursors %q/%q, want the configured u0/g0", c.GetResumeCursor(), c.GetBroadcastCursor())
	}

	// g1 is older than g2 but arrives later (a paced or deferred send).
	pc.write(slices.Concat(groupPushFrame(t, "g2"), pushFrame(t, "u1"), groupPushFrame(t, "g1")))
	var got []Message
	for range 3 {
		got = append(got, tc.message(t))
	}
	if got[0].ID != "g2" || !got[0].Group || got[1].ID != "u1" || got[1].Group || got[2].ID != "g1" || !got[2].Group {
		t.Fatalf("delivered %+v", got)
	}
	pc.acked(3)
	if tc.Cursor() != "u1" || tc.BroadcastCursor() != "g2" {
		t.Fatalf("Cursor %q BroadcastCursor %q, want u1 and g2 (group ids do not move the unicast cursor)", tc.Cursor(), tc.BroadcastCursor())
	}
	if ids := tc.HandledGroupIDs(); !slices.Equal(ids, []string{"g2", "g1"}) {
		t.Fatalf("HandledGroupIDs = %v", ids)
	}

	// Reconnect: the server replays from the cursor minus its look-back,
	// so g1 and g2 come again. Only g3 is new.
	_ = pc.conn.Close()
	pc = p.accept(t)
	if c := pc.handshake(30); c.GetResumeCursor() != "u1" || c.GetBroadcastCursor() != "g2" {
		t.Fatalf("CONNECT cursors after reconnect %q/%q, want u1/g2", c.GetResumeCursor(), c.GetBroadcastCursor())
	}
	pc.write(slices.Concat(groupPushFrame(t, "g1"), groupPushFrame(t, "g2"), groupPushFrame(t, "g3")))
	if ids, _ := pc.acked(3); !slices.Equal(ids, []string{"g1", "g2", "g3"}) {
		t.Fatalf("acked %v, want every replayed copy acked", ids)
	}
	if m := tc.message(t); m.ID != "g3" {
		t.Fatalf("delivered %q after the replay, want only g3", m.ID)
	}
	tc.noMessage(t)
	if tc.BroadcastCursor() != "g3" {
		t.Fatalf("BroadcastCursor %q, want g3", tc.BroadcastCursor())
	}
}

// An app persists BroadcastCursor and HandledGroupIDs; after a restart the
// server's look-back replay does not hand the old group messages over again.
func TestGroupReplayAfterRestart(t *testing.T) {
	// First process: handles g1 and g2.
	p := newPeer(t)
	first := startClient(t, testConfig(p.addr()))
	pc := p.accept(t)
	pc.handshake(30)
	pc.write(slices.Concat(groupPushFrame(t, "g1"), groupPushFrame(t, "g2")))
	first.received(t, 2)
	pc.acked(2)
	cursor, handled := first.BroadcastCursor(), first.HandledGroupIDs()
	_ = first.Close()
	first.result(t)

	tests := []struct {
		name    string
		handled []string
		want    []string
	}{
		{"persisted ids", handled, []string{"g3"}},
		{"cursor only", nil, []string{"g1", "g2", "g3"}}, // the look-back re-sends what the new process cannot know
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			cfg := testConfig(p.addr())
			cfg.BroadcastCursor, cfg.HandledGroupIDs = cursor, tt.handled
			tc := startClient(t, cfg)
			pc := p.accept(t)
			if c := pc.handshake(30); c.GetBroadcastCursor() != "g2" {
				t.Fatalf("CONNECT broadcast_cursor %q, want g2", c.GetBroadcastCursor())
			}
			pc.write(slices.Concat(groupPushFrame(t, "g1"), groupPushFrame(t, "g2"), groupPushFrame(t, "g3")))
			pc.acked(3)
			if got := tc.received(t, len(tt.want)); !slices.Equal(got, tt.want) {
				t.Fatalf("delivered %v, want %v", got, tt.want)
			}
			tc.noMessage(t)
		})
	}
}

func TestHandledGroupIDsAreBounded(t *testing.T) {
	var seed []string
	for i := range 2000 {
		seed = append(seed, fmt.Sprintf("g%04d", i))
	}
	cfg := testConfig("127.0.0.1:1")
	cfg.HandledGroupIDs = seed
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := c.HandledGroupIDs()
	if len(got) != maxGroupIDs || got[0] != seed[len(seed)-maxGroupIDs] || got[len(got)-1] != "g1999" {
		t.Fatalf("HandledGroupIDs: %d ids from %q to %q, want the newest %d", len(got), got[0], got[len(got)-1], maxGroupIDs)
	}
}
