// Package route defines the routing table: which gateway node holds the live
// session of a device. memroute is the in-process table; etcdroute keeps
// routes under one lease per gateway node; routetest is the contract suite.
package route

import "context"

// Route points at one live session.
type Route struct {
	Node   string // gateway node id
	ConnID uint64 // session id, unique per node
}

// Table is the routing table. Device keys are "app_id/device_id" (see Key).
type Table interface {
	// Bind points the device at r, replacing any previous route.
	Bind(ctx context.Context, device string, r Route) error
	// Unbind removes the device's route only if it still points at r (a
	// newer connection's route survives the old one's unbind). It reports
	// whether it removed anything.
	Unbind(ctx context.Context, device string, r Route) (bool, error)
	// Lookup returns the routes of those devices that have one.
	Lookup(ctx context.Context, devices []string) (map[string]Route, error)
	// DropNode removes every route of a gateway node (its lease or TTL
	// ran out, or it shut down).
	DropNode(ctx context.Context, node string) error
	Close() error
}

// Key is the routing-table and log key of a device.
func Key(appID, deviceID string) string { return appID + "/" + deviceID }
