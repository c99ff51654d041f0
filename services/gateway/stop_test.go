package gateway_test

import (
	"testing"

	"github.com/heraldpush/herald/services/gateway"
	"github.com/heraldpush/herald/services/gateway/gatewaytest"
)

// A gateway on event loops stopped right after it started must still stop
// (the nbio loops used until 2026-11-29 could miss a stop that came before
// they first ran, and Run then never returned; netpoll must not regress). gatewaytest's Stop fails the test if Run does
// not return within gatewaytest.Wait.
func TestEventLoopGatewayStopsRightAfterStarting(t *testing.T) {
	for i := range 30 {
		e := gatewaytest.Start(t, gatewaytest.Options{Config: gateway.Config{IO: gateway.IOEventLoop}})
		e.Stop()
		if t.Failed() {
			t.Fatalf("start/stop %d of 30: the gateway did not stop", i+1)
		}
	}
}
