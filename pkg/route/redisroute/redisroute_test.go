package redisroute_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/route"
	"github.com/heraldpush/herald/pkg/route/redisroute"
	"github.com/redis/go-redis/v9"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		tb.Fatal(err)
	}
	return addr
}

func TestErrors(t *testing.T) {
	dev := route.Key("app", "d")
	r := route.Route{Node: "gw-a", ConnID: 1}

	down := redis.NewClient(&redis.Options{Addr: closedAddr(t), MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { down.Close() })
	closed := redis.NewClient(&redis.Options{Addr: closedAddr(t)})
	closed.Close()

	tests := []struct {
		name   string
		client redis.UniversalClient
		want   error
	}{
		{"server down", down, herald.ErrUnavailable},
		{"client closed", closed, herald.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := redisroute.New(tt.client, redisroute.Options{}, nil)
			defer tbl.Close()
			ctx := t.Context()
			_, unbindErr := tbl.Unbind(ctx, dev, r)
			_, lookupErr := tbl.Lookup(ctx, []string{dev})
			for op, err := range map[string]error{
				"Bind":     tbl.Bind(ctx, dev, r),
				"Unbind":   unbindErr,
				"Touch":    tbl.Touch(ctx, dev, r),
				"Lookup":   lookupErr,
				"DropNode": tbl.DropNode(ctx, "gw-a"),
			} {
				if !errors.Is(err, tt.want) {
					t.Errorf("%s = %v, want %v", op, err, tt.want)
				}
			}
		})
	}
}

func TestTouchInvalidArgument(t *testing.T) {
	tbl := redisroute.New(redis.NewClient(&redis.Options{Addr: closedAddr(t)}), redisroute.Options{}, nil)
	defer tbl.Close()
	for _, c := range []struct {
		device string
		r      route.Route
	}{
		{"", route.Route{Node: "gw", ConnID: 1}},
		{"app/d", route.Route{ConnID: 1}},
	} {
		if err := tbl.Touch(t.Context(), c.device, c.r); !errors.Is(err, herald.ErrInvalidArgument) {
			t.Errorf("Touch(%q, %+v) = %v, want %v", c.device, c.r, err, herald.ErrInvalidArgument)
		}
	}
}
