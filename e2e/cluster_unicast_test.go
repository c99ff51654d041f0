//go:build integration

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// connectAll registers and connects n devices through the endpoint list.
func connectAll(t *testing.T, api *apiClient, ap app, base string, n int, gws []string, prefix string) []*device {
	t.Helper()
	devs := make([]*device, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("%s-%05d", prefix, i)
			var out struct {
				Token string `json:"device_token"`
			}
			code, raw, err := api.doE("POST", "/v1/devices", ap.auth, map[string]string{"device_id": id, "platform": "android"}, &out)
			if err != nil || code != http.StatusCreated {
				t.Errorf("register %s: %d %s %v", id, code, raw, err)
				return
			}
			d := newDevice(ap, id, out.Token, gws...)
			d.endpoints = base
			if err := d.connectE(); err != nil {
				t.Error(err)
				return
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d devices registered and connected", n)
	t.Cleanup(func() {
		for _, d := range devs {
			d.disconnect(t)
		}
	})
	return devs
}

var connGauge = regexp.MustCompile(`(?m)^herald_gateway_connections\S*\s+(\d+)`)

// gatewayConnections reads a gateway process's connection gauge.
func gatewayConnections(t *testing.T, ops string) int {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := connGauge.FindSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// expectDelivered checks every message's status counts settle to one
// delivery, reading them from 16 workers.
func expectDelivered(t *testing.T, api *apiClient, ap app, want map[string]map[string]bool) {
	t.Helper()
	start := time.Now()
	var ids []string
	for _, m := range want {
		for id := range m {
			ids = append(ids, id)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	jobs := make(chan string)
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range jobs {
				for {
					var st messageStatus
					code, raw, err := api.doE("GET", "/v1/messages/"+id, ap.auth, nil, &st)
					if err == nil && code == 200 && st.Counts == (counts{Targeted: 1, Delivered: 1}) {
						break
					}
					if time.Now().After(deadline) {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("%s: %d %s %+v %v", id, code, raw, st.Counts, err))
						mu.Unlock()
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	for _, id := range ids {
		jobs <- id
	}
	close(jobs)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of %d messages do not count one delivery, e.g. %s", len(bad), len(ids), bad[0])
	}
	t.Logf("status of %d messages checked in %s", len(ids), time.Since(start))
}

// Acceptance (cluster) 2 and 6: devices spread over 2 gateway processes,
// unicast messages through the api process, 2 dispatcher processes on
// Kafka, the store on Cassandra, the routing table on Redis and on etcd:
// each device gets exactly its messages once; status counts are true.
func TestClusterUnicast(t *testing.T) {
	for _, router := range []string{"redis", "etcd"} {
		t.Run(router, func(t *testing.T) {
			nDevices, perDevice := 2000, 10
			if router == "etcd" {
				nDevices, perDevice = 1000, 10 // the etcd table is the small-deployment option
			}
			cl := startCluster(t, clusterSpec{router: router, gateways: 2, dispatchers: 2})
			api := newAPI("http://" + cl.api.api)
			ap := api.createApp(t, "cluster-"+router)
			cl.waitEndpoints(api, ap, 2)
			devs := connectAll(t, api, ap, "http://"+cl.api.api, nDevices, cl.gatewayAddrs(), "dev")
			for _, g := range cl.gateways {
				if n := gatewayConnections(t, g.ops); n < nDevices/10 {
					t.Fatalf("gateway %s holds %d of %d devices: the endpoint list does not spread them", g.name, n, nDevices)
				}
			}
			want := sendToEach(t, api, ap, devs, perDevice)
			expectExactly(t, devs, want, 120*time.Second)
			expectDelivered(t, api, ap, want)
		})
	}
}
