package herald

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/api/devicev1"
	"github.com/heraldpush/herald/api/frame"
)

func TestReceiptsAndBadge(t *testing.T) {
	p := newPeer(t)
	tc := startClient(t, testConfig(p.addr()))
	// Dialled, but the handshake has not completed: nothing to send on.
	pc := p.accept(t)
	if err := tc.ReportClick(t.Context(), "m1"); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("ReportClick before CONNACK = %v, want ErrNotConnected", err)
	}
	pc.handshake(30)
	waitConnected(t, tc)

	tests := []struct {
		name string
		call func() error
		typ  frame.Type
		want string // the frame body, as text
	}{
		{"click", func() error { return tc.ReportClick(t.Context(), "m1", "m2") }, frame.TypeReceipt,
			(&devicev1.Receipt{MessageIds: []string{"m1", "m2"}, Event: devicev1.ReceiptEvent_RECEIPT_EVENT_CLICKED}).String()},
		{"open", func() error { return tc.ReportOpen(t.Context(), "m3") }, frame.TypeReceipt,
			(&devicev1.Receipt{MessageIds: []string{"m3"}, Event: devicev1.ReceiptEvent_RECEIPT_EVENT_OPENED}).String()},
		{"badge", func() error { return tc.SetBadge(t.Context(), 7) }, frame.TypeSetBadge, (&devicev1.SetBadge{Badge: 7}).String()},
		{"badge reset", func() error { return tc.SetBadge(t.Context(), 0) }, frame.TypeSetBadge, (&devicev1.SetBadge{}).String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			var got string
			switch tt.typ {
			case frame.TypeReceipt:
				var r devicev1.Receipt
				pc.expect(tt.typ, &r)
				got = r.String()
			case frame.TypeSetBadge:
				var b devicev1.SetBadge
				pc.expect(tt.typ, &b)
				got = b.String()
			}
			if got != tt.want {
				t.Fatalf("sent %s, want %s", got, tt.want)
			}
		})
	}

	t.Run("bad arguments send nothing", func(t *testing.T) {
		if err := tc.SetBadge(t.Context(), -1); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("SetBadge(-1) = %v, want ErrInvalidArgument", err)
		}
		if err := tc.ReportClick(t.Context()); err != nil {
			t.Fatalf("ReportClick() = %v, want nil", err)
		}
		if err := tc.SetBadge(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		var b devicev1.SetBadge
		pc.expect(frame.TypeSetBadge, &b) // the next frame is this one
		if b.GetBadge() != 1 {
			t.Fatalf("SETBADGE %d, want 1", b.GetBadge())
		}
	})

	t.Run("many ids are split into frames the server accepts", func(t *testing.T) {
		var ids []string
		for i := range 5000 {
			ids = append(ids, fmt.Sprintf("01K%023d", i)) // 26 bytes, like real ids
		}
		if err := tc.ReportOpen(t.Context(), ids...); err != nil {
			t.Fatal(err)
		}
		var got []string
		frames := 0
		for len(got) < len(ids) {
			var r devicev1.Receipt
			pc.expect(frame.TypeReceipt, &r) // the peer's reader refuses frames above the limit
			if r.GetEvent() != devicev1.ReceiptEvent_RECEIPT_EVENT_OPENED {
				t.Fatalf("event %v", r.GetEvent())
			}
			got = append(got, r.GetMessageIds()...)
			frames++
		}
		if !slices.Equal(got, ids) || frames < 3 || frames > 4 {
			t.Fatalf("%d ids in %d frames, want all %d in order in 3-4 full frames", len(got), frames, len(ids))
		}
	})

	t.Run("after a drop", func(t *testing.T) {
		_ = pc.conn.Close() // the client reconnects, but nobody answers its CONNECT
		deadline := time.Now().Add(waitFor)
		for {
			err := tc.ReportClick(t.Context(), "m1")
			if errors.Is(err, ErrNotConnected) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ReportClick on a dropped connection = %v, want ErrNotConnected", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("after close", func(t *testing.T) {
		_ = tc.Close()
		tc.result(t)
		for _, err := range []error{tc.ReportClick(t.Context(), "m1"), tc.ReportOpen(t.Context(), "m1"), tc.SetBadge(t.Context(), 0)} {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("after Close: %v, want ErrClosed", err)
			}
		}
	})
}

// waitConnected polls until the client has a session.
func waitConnected(t testing.TB, tc *testClient) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		if _, err := tc.current(t.Context()); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("client never connected")
		}
		time.Sleep(time.Millisecond)
	}
}
