package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/store"
)

// grpcAPI is heraldv1.HeraldServer: a translation onto the service. Its
// methods return domain errors; unaryInterceptor turns them into statuses.
type grpcAPI struct {
	heraldv1.UnimplementedHeraldServer
	svc *service
}

func (g *grpcAPI) CreateApp(ctx context.Context, req *heraldv1.CreateAppRequest) (*heraldv1.CreateAppResponse, error) {
	if err := g.svc.authorizeAdmin(bearerToken(authorization(ctx))); err != nil {
		return nil, err
	}
	c, err := g.svc.CreateApp(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &heraldv1.CreateAppResponse{AppId: c.AppID, AppKey: c.AppKey, AppSecret: c.AppSecret}, nil
}

func (g *grpcAPI) RegisterDevice(ctx context.Context, req *heraldv1.RegisterDeviceRequest) (*heraldv1.RegisterDeviceResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	id, token, err := g.svc.RegisterDevice(ctx, app, deviceRegistration{
		DeviceID: req.GetDeviceId(), Platform: req.GetPlatform(), Alias: req.GetAlias(),
		Tags: grpcTags(req.GetTags()),
	})
	if err != nil {
		return nil, err
	}
	return &heraldv1.RegisterDeviceResponse{DeviceId: id, DeviceToken: token}, nil
}

func (g *grpcAPI) DeleteDevice(ctx context.Context, req *heraldv1.DeleteDeviceRequest) (*heraldv1.DeleteDeviceResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	if err := g.svc.DeleteDevice(ctx, app, req.GetDeviceId()); err != nil {
		return nil, err
	}
	return &heraldv1.DeleteDeviceResponse{}, nil
}

func (g *grpcAPI) SendMessage(ctx context.Context, req *heraldv1.SendMessageRequest) (*heraldv1.SendMessageResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	v, err := sendRequestFromProto(req).validate(g.svc.limits, g.svc.now())
	if err != nil {
		return nil, err
	}
	res, err := g.svc.Send(ctx, app, v)
	if err != nil {
		return nil, err
	}
	return &heraldv1.SendMessageResponse{
		MessageId: res.MessageID, State: res.State, InvalidDeviceIds: res.InvalidDeviceIDs, CappedDeviceIds: res.CappedDeviceIDs,
	}, nil
}

func (g *grpcAPI) GetMessage(ctx context.Context, req *heraldv1.GetMessageRequest) (*heraldv1.GetMessageResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	st, err := g.svc.MessageStatus(ctx, app, req.GetMessageId())
	if err != nil {
		return nil, err
	}
	c := st.Counts
	return &heraldv1.GetMessageResponse{
		MessageId: st.MessageID,
		State:     st.State,
		Audience:  st.Audience,
		SendAt:    rfc3339(st.SendAt),
		Counts: &heraldv1.Counts{
			Targeted: c.Targeted, Delivered: c.Delivered, Pending: c.Pending, Expired: c.Expired,
			Failed: c.Failed, Collapsed: c.Collapsed, Clicked: c.Clicked, Recalled: c.Recalled,
		},
	}, nil
}

func (g *grpcAPI) CancelMessage(ctx context.Context, req *heraldv1.CancelMessageRequest) (*heraldv1.CancelMessageResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	state, err := g.svc.CancelMessage(ctx, app, req.GetMessageId())
	if err != nil {
		return nil, err
	}
	return &heraldv1.CancelMessageResponse{MessageId: req.GetMessageId(), State: state}, nil
}

// sendRequestFromProto is the service's view of a gRPC send.
func sendRequestFromProto(req *heraldv1.SendMessageRequest) sendRequest {
	r := sendRequest{Data: req.GetData()}
	if a := req.GetAudience(); a != nil {
		// proto3 cannot tell an empty field from an absent one: empty is absent.
		r.Audience = &audienceRequest{All: a.GetAll(), Platform: a.GetPlatform()}
		if len(a.GetDeviceIds()) > 0 {
			r.Audience.DeviceIDs = a.GetDeviceIds()
		}
		if len(a.GetAliases()) > 0 {
			r.Audience.Aliases = a.GetAliases()
		}
		if a.GetTags() != "" {
			r.Audience.Tags = &a.Tags
		}
		if a.GetTopic() != "" {
			r.Audience.Topic = &a.Topic
		}
	}
	if n := req.GetNotification(); n != nil {
		r.Notification = &notificationRequest{
			Title: n.GetTitle(), Body: n.GetBody(), Badge: n.Badge, BadgeAdd: n.BadgeAdd, Sound: n.GetSound(),
			ClickAction: n.GetClickAction(), Image: n.GetImage(), Channel: n.GetChannel(),
		}
	}
	if o := req.GetOptions(); o != nil {
		r.TTLSeconds = o.TtlSeconds
		r.Priority = o.GetPriority()
		r.CollapseID = o.GetCollapseId()
		r.IdempotencyKey = o.GetIdempotencyKey()
		r.SendAt = o.GetSendAt()
		r.SpreadOverSeconds = o.GetSpreadOverSeconds()
	}
	return r
}

// authApp authenticates the app from "authorization: Basic base64(key:secret)".
func (g *grpcAPI) authApp(ctx context.Context) (store.App, error) {
	key, secret, ok := basicAuth(authorization(ctx))
	if !ok {
		return store.App{}, fmt.Errorf("%w: metadata \"authorization: Basic base64(app_key:app_secret)\" required", herald.ErrUnauthenticated)
	}
	return g.svc.authenticateApp(ctx, key, secret)
}

// authorization returns the first "authorization" metadata value.
func authorization(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// basicAuth parses a "Basic base64(user:password)" value.
func basicAuth(h string) (user, password string, ok bool) {
	scheme, enc, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(raw), ":")
}

// unaryInterceptor turns domain errors into gRPC statuses through the error
// table, records metrics, and keeps a handler panic from killing the process.
func unaryInterceptor(m *metrics, logger *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				logger.ErrorContext(ctx, "grpc handler panicked", "method", info.FullMethod, "panic", fmt.Sprint(p))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
			m.request(ctx, info.FullMethod, status.Code(err).String(), time.Since(start))
		}()
		resp, err = handler(ctx, req)
		if err != nil {
			if _, isStatus := status.FromError(err); !isStatus {
				c := classify(err)
				if c.status >= 500 {
					logger.ErrorContext(ctx, "request failed", "method", info.FullMethod, "code", c.code, "err", err)
				}
				if secs, ok := retryAfter(err); ok {
					_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", strconv.Itoa(secs)))
				}
				err = status.Error(c.grpc, publicMessage(c, err))
			}
		}
		return resp, err
	}
}

// grpcTags maps the repeated field (which cannot tell absent from empty)
// onto a registration: no tags listed keeps a re-registered device's tags.
func grpcTags(tags []string) []string {
	if len(tags) == 0 {
		return nil
	}
	return tags
}
