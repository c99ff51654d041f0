// Package herald is the Go device SDK for Herald: it keeps one long-lived
// connection to a Herald gateway, hands every pushed message to the
// application exactly once per process (the server may send duplicates; the
// SDK drops them by message id), acknowledges what was handled, keeps the
// connection alive with heartbeats and reconnects on its own.
//
// A device is registered through the business API first (it gets a device id
// and a device token); the SDK then connects with the app key, the device id
// and the token:
//
//	c, err := herald.New(herald.Config{
//		EndpointsURL: "https://push.example.com", // the gateway list, from the API
//		Addrs:        []string{"203.0.113.10:5222", "203.0.113.11:5222"}, // fallback
//		AppKey:       appKey,
//		DeviceID:     deviceID,
//		Token:        token,
//		OnMessage: func(m herald.Message) {
//			// store or show m; it is acknowledged when this returns
//		},
//	})
//	...
//	err = c.Run(ctx) // until ctx ends, c.Close, or the server refuses the device
//
// Behaviour in one place:
//   - With EndpointsURL the client fetches its ordered gateway list from the
//     API (GET /v1/endpoints) before connecting, when the list's TTL passed and
//     after every gateway in it failed, and tries the addresses in order; when
//     the API cannot be reached it uses the last good list, then Addrs.
//   - OnMessage is called in order, one message at a time, from one goroutine.
//     The message is acknowledged after OnMessage returns; acknowledgements are
//     batched but never held back more than a few milliseconds.
//   - A message id already handled is acknowledged again but not passed to
//     OnMessage (the last Config.DedupSize ids are remembered).
//   - Cursor returns the newest message id handled of those sent to this
//     device alone; it is sent on every reconnect so the server skips what
//     the device already has. Persist it and pass it back as
//     Config.ResumeCursor after a restart.
//   - Broadcast, tag and topic messages (Message.Group) advance
//     BroadcastCursor instead; the server replays the group messages the
//     device missed from it on every connect, looking back a while past it
//     (so a message paced or deferred by the server is not missed) and
//     re-sending some the device has: the SDK drops those as duplicates.
//     Persist BroadcastCursor and HandledGroupIDs and pass them back as
//     Config.BroadcastCursor and Config.HandledGroupIDs after a restart.
//   - Subscribe and Unsubscribe change the device's topics and return once
//     the server stored the change (resent on the next connection if the
//     connection drops first).
//   - ReportClick and ReportOpen report what the user did with messages, and
//     SetBadge sets the server's badge counter for the device; they send on
//     the current connection only and return ErrNotConnected when there is
//     none.
//   - Network errors and close codes 3000-3999 make the client reconnect with
//     exponential backoff and full jitter, honouring the server's retry-after
//     and redirect. Close codes 4000-4999 stop Run with a *CloseError.
//   - Upstream sends a message to the app's servers and returns once the
//     server has stored it durably; it is resent on the next connection if
//     the connection drops first (same request id, so it is at-least-once).
package herald
