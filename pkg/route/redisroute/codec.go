package redisroute

import (
	"strconv"
	"strings"

	"github.com/heraldpush/herald/pkg/route"
)

// encode writes a route as "<conn id> <node>", the format etcdroute also
// uses. The scripts find the node after the first space.
func encode(r route.Route) string {
	return strconv.FormatUint(r.ConnID, 10) + " " + r.Node
}

// decode reads a route value; anything else with access to Redis may have
// written it, so it is checked, never trusted.
func decode(v string) (route.Route, bool) {
	conn, node, ok := strings.Cut(v, " ")
	if !ok || node == "" {
		return route.Route{}, false
	}
	id, err := strconv.ParseUint(conn, 10, 64)
	if err != nil {
		return route.Route{}, false
	}
	return route.Route{Node: node, ConnID: id}, true
}
