package api

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/route"
)

func grpcClient(t testing.TB, e *testEnv) heraldv1.HeraldClient {
	t.Helper()
	conn, err := grpc.NewClient(e.srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return heraldv1.NewHeraldClient(conn)
}

func TestGRPC(t *testing.T) {
	e := newEnv(t)
	c := grpcClient(t, e)
	adminCtx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testAdminToken)

	created, err := c.CreateApp(adminCtx, &heraldv1.CreateAppRequest{Name: "shop"})
	if err != nil {
		t.Fatalf("CreateApp: %v", err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(created.GetAppKey()+":"+created.GetAppSecret()))
	appCtx := metadata.AppendToOutgoingContext(t.Context(), "authorization", basic)

	reg, err := c.RegisterDevice(appCtx, &heraldv1.RegisterDeviceRequest{DeviceId: "d1", Platform: "ios"})
	if err != nil {
		t.Fatalf("RegisterDevice: %v", err)
	}
	if reg.GetDeviceId() != "d1" || reg.GetDeviceToken() == "" {
		t.Fatalf("RegisterDevice answered %v", reg)
	}

	sent, err := c.SendMessage(appCtx, &heraldv1.SendMessageRequest{
		Audience:     &heraldv1.Audience{DeviceIds: []string{"d1", "ghost"}},
		Notification: &heraldv1.Notification{Title: "Hi", Badge: proto.Int32(3)},
		Options:      &heraldv1.Options{TtlSeconds: proto.Int64(0), Priority: "normal"},
	})
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	if len(sent.GetInvalidDeviceIds()) != 1 || sent.GetInvalidDeviceIds()[0] != "ghost" {
		t.Errorf("invalid ids %v, want [ghost]", sent.GetInvalidDeviceIds())
	}
	recs := e.appended(t)
	if len(recs) != 1 || string(recs[0].Key) != route.Key(created.GetAppId(), "d1") {
		t.Fatalf("appended %v, want one record for d1", recs)
	}
	env := decodeEnvelope(t, recs[0])
	if env.GetPush().GetMessageId() != sent.GetMessageId() || env.GetPush().GetNotification().GetBadge() != 3 || !env.GetOnlineOnly() {
		t.Errorf("envelope %v", env)
	}

	got, err := c.GetMessage(appCtx, &heraldv1.GetMessageRequest{MessageId: sent.GetMessageId()})
	if err != nil {
		t.Fatalf("GetMessage: %v", err)
	}
	if got.GetState() != "sending" || got.GetCounts().GetTargeted() != 2 || got.GetCounts().GetFailed() != 1 || got.GetCounts().GetPending() != 1 {
		t.Errorf("GetMessage answered %v", got)
	}

	if _, err := c.DeleteDevice(appCtx, &heraldv1.DeleteDeviceRequest{DeviceId: "d1"}); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}

	tooMany := make([]string, 1001)
	for i := range tooMany {
		tooMany[i] = "d1"
	}
	errTests := []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantMsg  string
	}{
		{"CreateApp without token", func() error {
			_, err := c.CreateApp(t.Context(), &heraldv1.CreateAppRequest{Name: "x"})
			return err
		}, codes.Unauthenticated, ""},
		{"CreateApp without name", func() error {
			_, err := c.CreateApp(adminCtx, &heraldv1.CreateAppRequest{})
			return err
		}, codes.InvalidArgument, "name"},
		{"RegisterDevice with admin token", func() error {
			_, err := c.RegisterDevice(adminCtx, &heraldv1.RegisterDeviceRequest{Platform: "ios"})
			return err
		}, codes.Unauthenticated, ""},
		{"SendMessage to 1001 devices", func() error {
			_, err := c.SendMessage(appCtx, &heraldv1.SendMessageRequest{
				Audience: &heraldv1.Audience{DeviceIds: tooMany}, Data: map[string]string{"k": "v"},
			})
			return err
		}, codes.InvalidArgument, "limit is 1000"},
		{"SendMessage too large", func() error {
			_, err := c.SendMessage(appCtx, &heraldv1.SendMessageRequest{
				Audience: &heraldv1.Audience{DeviceIds: []string{"d1"}}, Data: map[string]string{"k": strings.Repeat("x", 5000)},
			})
			return err
		}, codes.ResourceExhausted, "limit is 4096"},
		{"SendMessage to deleted device", func() error {
			_, err := c.SendMessage(appCtx, &heraldv1.SendMessageRequest{
				Audience: &heraldv1.Audience{DeviceIds: []string{"d1"}}, Data: map[string]string{"k": "v"},
			})
			return err
		}, codes.NotFound, "device not found"},
		{"GetMessage unknown", func() error {
			_, err := c.GetMessage(appCtx, &heraldv1.GetMessageRequest{MessageId: "nope"})
			return err
		}, codes.NotFound, ""},
		{"DeleteDevice twice", func() error {
			_, err := c.DeleteDevice(appCtx, &heraldv1.DeleteDeviceRequest{DeviceId: "d1"})
			return err
		}, codes.NotFound, ""},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
		})
	}
	if recs := e.appended(t); len(recs) != 0 {
		t.Errorf("rejected gRPC sends appended %d records", len(recs))
	}
}

func TestGRPCAdminDisabled(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdminToken = "" })
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testAdminToken)
	_, err := grpcClient(t, e).CreateApp(ctx, &heraldv1.CreateAppRequest{Name: "x"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
}

// TestGRPCSendAPI: the send API's gRPC calls share the service with REST:
// same records, same states, same errors.
func TestGRPCSendAPI(t *testing.T) {
	e := newEnv(t)
	c := grpcClient(t, e)
	adminCtx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testAdminToken)
	created, err := c.CreateApp(adminCtx, &heraldv1.CreateAppRequest{Name: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	appID := created.GetAppId()
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(created.GetAppKey()+":"+created.GetAppSecret()))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", basic)
	for _, d := range []string{"d1", "d2"} {
		if _, err := c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{DeviceId: d, Platform: "android"}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("register with tags, re-register keeps them", func(t *testing.T) {
		if _, err := c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{DeviceId: "d3", Platform: "ios", Tags: []string{"vip", "cn"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{DeviceId: "d3", Platform: "ios"}); err != nil {
			t.Fatal(err)
		}
		d, err := c.GetDevice(ctx, &heraldv1.GetDeviceRequest{DeviceId: "d3"})
		if err != nil {
			t.Fatal(err)
		}
		if got := d.GetTags(); len(got) != 2 || got[0] != "cn" || got[1] != "vip" {
			t.Fatalf("tags after registering with [vip cn] and re-registering without tags = %v, want [cn vip]", got)
		}
		if _, err := c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{DeviceId: "d4", Platform: "ios", Tags: []string{"bad tag"}}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("registering with an invalid tag: %v, want InvalidArgument", err)
		}
	})

	t.Run("devices", func(t *testing.T) {
		up, err := c.UpdateTags(ctx, &heraldv1.UpdateTagsRequest{DeviceIds: []string{"d1", "d2", "ghost"}, Add: []string{"vip"}})
		if err != nil || len(up.GetInvalidDeviceIds()) != 1 || up.GetInvalidDeviceIds()[0] != "ghost" {
			t.Fatalf("UpdateTags: %v %v", up, err)
		}
		if _, err := c.UpdateTopics(ctx, &heraldv1.UpdateTopicsRequest{DeviceId: "d1", Subscribe: []string{"news", "f1"}, Unsubscribe: []string{"f1"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetAlias(ctx, &heraldv1.SetAliasRequest{DeviceId: "d1", Alias: "alice"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetBadge(ctx, &heraldv1.SetBadgeRequest{DeviceId: "d1", Badge: 4}); err != nil {
			t.Fatal(err)
		}
		d, err := c.GetDevice(ctx, &heraldv1.GetDeviceRequest{DeviceId: "d1"})
		if err != nil {
			t.Fatal(err)
		}
		want := &heraldv1.Device{DeviceId: "d1", Platform: "android", Alias: "alice", Tags: []string{"vip"}, Topics: []string{"news"}, Badge: 4}
		if !proto.Equal(d, want) {
			t.Fatalf("GetDevice %v, want %v", d, want)
		}
		if _, err := c.GetDevice(ctx, &heraldv1.GetDeviceRequest{DeviceId: "ghost"}); status.Code(err) != codes.NotFound {
			t.Errorf("GetDevice ghost: %v", err)
		}
	})

	t.Run("group send", func(t *testing.T) {
		sent, err := c.SendMessage(ctx, &heraldv1.SendMessageRequest{
			Audience:     &heraldv1.Audience{Tags: "vip && !churned", Platform: "android"},
			Notification: &heraldv1.Notification{Title: "t", BadgeAdd: proto.Int32(1), Image: "https://x/i.png"},
			Options:      &heraldv1.Options{SpreadOverSeconds: 30},
		})
		if err != nil || sent.GetState() != "accepted" {
			t.Fatalf("SendMessage: %v %v", sent, err)
		}
		recs := e.appended(t)
		if len(recs) != 1 || string(recs[0].Key) != appID {
			t.Fatalf("records %v", recs)
		}
		env := decodeEnvelope(t, recs[0])
		if env.GetAudience().GetTagExpr() != "vip && !churned" || env.GetBadgeAdd() != 1 || env.GetSpreadOverMs() != 30000 ||
			env.GetPush().GetNotification().GetImage() != "https://x/i.png" {
			t.Errorf("envelope %v", env)
		}
		got, err := c.GetMessage(ctx, &heraldv1.GetMessageRequest{MessageId: sent.GetMessageId()})
		if err != nil || got.GetState() != "sending" || got.GetAudience() != "tags" {
			t.Errorf("GetMessage %v %v", got, err)
		}
	})

	t.Run("schedule and cancel", func(t *testing.T) {
		at := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		sent, err := c.SendMessage(ctx, &heraldv1.SendMessageRequest{
			Audience: &heraldv1.Audience{Aliases: []string{"alice"}}, Data: map[string]string{"k": "v"},
			Options: &heraldv1.Options{SendAt: at.Format(time.RFC3339)},
		})
		if err != nil || sent.GetState() != "scheduled" {
			t.Fatalf("SendMessage: %v %v", sent, err)
		}
		got, err := c.GetMessage(ctx, &heraldv1.GetMessageRequest{MessageId: sent.GetMessageId()})
		if err != nil || got.GetState() != "scheduled" || got.GetSendAt() != at.Format(time.RFC3339) || got.GetAudience() != "aliases" {
			t.Errorf("GetMessage %v %v", got, err)
		}
		cancelled, err := c.CancelMessage(ctx, &heraldv1.CancelMessageRequest{MessageId: sent.GetMessageId()})
		if err != nil || cancelled.GetState() != "cancelled" {
			t.Fatalf("CancelMessage: %v %v", cancelled, err)
		}
		_, err = c.CancelMessage(ctx, &heraldv1.CancelMessageRequest{MessageId: sent.GetMessageId()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("second CancelMessage: %v, want FailedPrecondition", err)
		}
	})

	t.Run("stats and settings", func(t *testing.T) {
		st, err := c.GetStats(ctx, &heraldv1.GetStatsRequest{From: "2026-03-01T00:00:00Z", To: "2026-03-03T00:00:00Z", Granularity: "day"})
		if err != nil || len(st.GetBuckets()) != 2 || st.GetTotal().GetStart() != "2026-03-01T00:00:00Z" {
			t.Errorf("GetStats %v %v", st, err)
		}
		s, err := c.UpdateSettings(ctx, &heraldv1.UpdateSettingsRequest{WebhookUrl: proto.String("https://h.example.com/")})
		if err != nil || s.GetWebhookUrl() != "https://h.example.com/" || s.GetAppId() != appID {
			t.Errorf("UpdateSettings %v %v", s, err)
		}
		if _, err := c.UpdateApp(ctx, &heraldv1.UpdateAppRequest{AppId: appID, RateLimitPerSecond: proto.Int32(1)}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("UpdateApp with app credentials: %v", err)
		}
		s, err = c.UpdateApp(adminCtx, &heraldv1.UpdateAppRequest{AppId: appID, RateLimitPerSecond: proto.Int32(1)})
		if err != nil || s.GetRateLimitPerSecond() != 1 || s.GetWebhookUrl() != "https://h.example.com/" {
			t.Errorf("UpdateApp %v %v", s, err)
		}
	})

	errTests := []struct {
		name     string
		req      *heraldv1.SendMessageRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"bad tag expression", &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{Tags: "vip &&"}, Data: map[string]string{"k": "v"}}, codes.InvalidArgument, "at byte 6"},
		{"unknown topic", &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{Topic: "sports"}, Data: map[string]string{"k": "v"}}, codes.NotFound, "topic not found"},
		{"empty audience", &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{}, Data: map[string]string{"k": "v"}}, codes.InvalidArgument, "needs one of"},
		{"badge and increment", &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{All: true}, Notification: &heraldv1.Notification{Title: "t", Badge: proto.Int32(1), BadgeAdd: proto.Int32(1)}}, codes.InvalidArgument, "exclusive"},
		{"send_at in the past", &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{All: true}, Data: map[string]string{"k": "v"}, Options: &heraldv1.Options{SendAt: "2020-01-01T00:00:00Z"}}, codes.InvalidArgument, "not in the future"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.SendMessage(ctx, tt.req)
			if st := status.Convert(err); st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
		})
	}

	t.Run("rate limited", func(t *testing.T) {
		req := &heraldv1.SendMessageRequest{Audience: &heraldv1.Audience{DeviceIds: []string{"d1"}}, Data: map[string]string{"k": "v"}}
		var header metadata.MD
		var err error
		for range 5 {
			if _, err = c.SendMessage(ctx, req, grpc.Header(&header)); err != nil {
				break
			}
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("5 sends at 1/s: %v, want ResourceExhausted", err)
		}
		if v := header.Get("retry-after"); len(v) != 1 || v[0] < "1" {
			t.Errorf("retry-after header %v", v)
		}
		e.appended(t)
	})
}
