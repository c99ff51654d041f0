package api

import (
	"encoding/base64"
	"strings"
	"testing"

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
