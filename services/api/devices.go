package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/heraldpush/herald"
	"github.com/heraldpush/herald/api/heraldv1"
	"github.com/heraldpush/herald/pkg/audience"
	"github.com/heraldpush/herald/pkg/store"
)

// Limits of a device's registration.
const (
	maxTagsPerDevice   = 64
	maxTopicsPerDevice = 64
	maxBadge           = 1<<31 - 1
)

// deviceView is a device as the API shows it.
type deviceView struct {
	store.Device
	Badge int32
}

// validAlias checks an alias ("" = none).
func validAlias(alias string) error {
	if len(alias) > maxAliasLen {
		return invalid("alias is longer than %d bytes", maxAliasLen)
	}
	if !printable(alias) {
		return invalid("alias must be printable UTF-8")
	}
	return nil
}

// validNames checks a list of tag or topic names and returns it sorted,
// without repeats.
func validNames(field string, names []string, limit int) ([]string, error) {
	if len(names) > limit {
		return nil, invalid("%s has %d names, the limit is %d", field, len(names), limit)
	}
	for i, n := range names {
		if !audience.ValidName(n) {
			return nil, invalid("%s[%d] is not a valid name (1-64 characters of A-Z a-z 0-9 _ . : -)", field, i)
		}
	}
	out := slices.Clone(names)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// afterUpdate is how many names a device has after adding add and then
// removing remove from have (all sorted, unique).
func afterUpdate(have, add, remove []string) int {
	n := len(have)
	for _, a := range add {
		if _, found := slices.BinarySearch(have, a); !found {
			if _, removed := slices.BinarySearch(remove, a); !removed {
				n++
			}
		}
	}
	for _, r := range remove {
		if _, found := slices.BinarySearch(have, r); found {
			n--
		}
	}
	return n
}

// device returns one of the app's devices.
func (s *service) device(ctx context.Context, appID, deviceID string) (store.Device, error) {
	if !validDeviceID(deviceID) {
		return store.Device{}, fmt.Errorf("%w: %q", herald.ErrDeviceNotFound, deviceID)
	}
	d, err := s.store.Device(ctx, appID, deviceID)
	if errors.Is(err, herald.ErrDeviceNotFound) {
		return store.Device{}, fmt.Errorf("%w: %q", herald.ErrDeviceNotFound, deviceID)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("look up device: %w", err)
	}
	return d, nil
}

// view adds the badge counter to d.
func (s *service) view(ctx context.Context, d store.Device) (deviceView, error) {
	n, err := s.store.Badge(ctx, d.AppID, d.ID)
	if err != nil {
		return deviceView{}, fmt.Errorf("read badge: %w", err)
	}
	return deviceView{Device: d, Badge: n}, nil
}

// refresh tells the device's live session to reload its registration.
// The change is stored either way; a failed refresh only means a live
// session matches group messages on the old values until it reconnects.
func (s *service) refresh(ctx context.Context, appID, deviceID string) {
	if s.kicker == nil {
		return
	}
	if err := s.kicker.Refresh(context.WithoutCancel(ctx), appID, deviceID); err != nil {
		s.logger.WarnContext(ctx, "refresh device session", "app_id", appID, "device_id", deviceID, "err", err)
	}
}

// GetDevice returns a device's registration and badge counter.
func (s *service) GetDevice(ctx context.Context, app store.App, deviceID string) (deviceView, error) {
	d, err := s.device(ctx, app.ID, deviceID)
	if err != nil {
		return deviceView{}, err
	}
	return s.view(ctx, d)
}

// SetAlias sets (or clears, with "") a device's alias.
func (s *service) SetAlias(ctx context.Context, app store.App, deviceID, alias string) (deviceView, error) {
	if err := validAlias(alias); err != nil {
		return deviceView{}, err
	}
	d, err := s.device(ctx, app.ID, deviceID)
	if err != nil {
		return deviceView{}, err
	}
	if d.Alias != alias {
		// Only the alias changes: a tag or topic change racing this one
		// is not overwritten.
		if d, err = s.store.SetAlias(ctx, app.ID, deviceID, alias); err != nil {
			if errors.Is(err, herald.ErrDeviceNotFound) {
				return deviceView{}, fmt.Errorf("%w: %q", herald.ErrDeviceNotFound, deviceID)
			}
			return deviceView{}, fmt.Errorf("set alias: %w", err)
		}
		s.refresh(ctx, app.ID, d.ID)
	}
	return s.view(ctx, d)
}

// tagUpdate is a validated change of tags.
type tagUpdate struct {
	add, remove []string
}

func newTagUpdate(add, remove []string) (tagUpdate, error) {
	var u tagUpdate
	var err error
	if u.add, err = validNames("add", add, maxTagsPerDevice); err != nil {
		return tagUpdate{}, err
	}
	if u.remove, err = validNames("remove", remove, maxTagsPerDevice); err != nil {
		return tagUpdate{}, err
	}
	if len(u.add) == 0 && len(u.remove) == 0 {
		return tagUpdate{}, invalid("add or remove needs at least one tag")
	}
	return u, nil
}

func (u tagUpdate) check(d store.Device) error {
	if n := afterUpdate(d.Tags, u.add, u.remove); n > maxTagsPerDevice {
		return invalid("device %s would have %d tags, the limit is %d", d.ID, n, maxTagsPerDevice)
	}
	return nil
}

// UpdateDeviceTags adds then removes tags on one device.
func (s *service) UpdateDeviceTags(ctx context.Context, app store.App, deviceID string, add, remove []string) (deviceView, error) {
	u, err := newTagUpdate(add, remove)
	if err != nil {
		return deviceView{}, err
	}
	d, err := s.device(ctx, app.ID, deviceID)
	if err != nil {
		return deviceView{}, err
	}
	if err := u.check(d); err != nil {
		return deviceView{}, err
	}
	d, err = s.store.UpdateTags(ctx, app.ID, d.ID, u.add, u.remove)
	if err != nil {
		return deviceView{}, fmt.Errorf("update tags: %w", err)
	}
	s.refresh(ctx, app.ID, d.ID)
	return s.view(ctx, d)
}

// UpdateTags adds then removes tags on up to MaxTargets devices. Listed
// devices that are not registered are returned; nothing changes for them.
// A change that would give a device too many tags changes no device.
func (s *service) UpdateTags(ctx context.Context, app store.App, deviceIDs, add, remove []string) ([]string, error) {
	switch {
	case len(deviceIDs) == 0:
		return nil, invalid("device_ids needs at least one device id")
	case len(deviceIDs) > s.limits.MaxTargets:
		return nil, invalid("device_ids has %d device ids, the limit is %d", len(deviceIDs), s.limits.MaxTargets)
	}
	for i, id := range deviceIDs {
		if !validDeviceID(id) {
			return nil, invalid("device_ids[%d] is not a valid device id (1-128 characters of A-Z a-z 0-9 . _ : -)", i)
		}
	}
	u, err := newTagUpdate(add, remove)
	if err != nil {
		return nil, err
	}
	ids := dedup(deviceIDs)
	devs, err := s.store.Devices(ctx, app.ID, ids)
	if err != nil {
		return nil, fmt.Errorf("look up devices: %w", err)
	}
	var invalidIDs, valid []string
	for _, id := range ids {
		d, ok := devs[id]
		if !ok {
			invalidIDs = append(invalidIDs, id)
			continue
		}
		if err := u.check(d); err != nil {
			return nil, err
		}
		valid = append(valid, id)
	}
	for _, id := range valid {
		if _, err := s.store.UpdateTags(ctx, app.ID, id, u.add, u.remove); err != nil {
			if errors.Is(err, herald.ErrDeviceNotFound) {
				invalidIDs = append(invalidIDs, id) // deleted meanwhile
				continue
			}
			return nil, fmt.Errorf("update tags: %w", err)
		}
		s.refresh(ctx, app.ID, id)
	}
	return invalidIDs, nil
}

// UpdateTopics subscribes then unsubscribes a device.
func (s *service) UpdateTopics(ctx context.Context, app store.App, deviceID string, subscribe, unsubscribe []string) (deviceView, error) {
	sub, err := validNames("subscribe", subscribe, maxTopicsPerDevice)
	if err != nil {
		return deviceView{}, err
	}
	unsub, err := validNames("unsubscribe", unsubscribe, maxTopicsPerDevice)
	if err != nil {
		return deviceView{}, err
	}
	if len(sub) == 0 && len(unsub) == 0 {
		return deviceView{}, invalid("subscribe or unsubscribe needs at least one topic")
	}
	d, err := s.device(ctx, app.ID, deviceID)
	if err != nil {
		return deviceView{}, err
	}
	if n := afterUpdate(d.Topics, sub, unsub); n > maxTopicsPerDevice {
		return deviceView{}, invalid("device %s would have %d topics, the limit is %d", d.ID, n, maxTopicsPerDevice)
	}
	d, err = s.store.UpdateTopics(ctx, app.ID, d.ID, sub, unsub)
	if err != nil {
		return deviceView{}, fmt.Errorf("update topics: %w", err)
	}
	s.refresh(ctx, app.ID, d.ID)
	return s.view(ctx, d)
}

// SetBadge sets a device's badge counter (0 resets it).
func (s *service) SetBadge(ctx context.Context, app store.App, deviceID string, n int64) (deviceView, error) {
	if n < 0 || n > maxBadge {
		return deviceView{}, invalid("badge must be between 0 and %d", maxBadge)
	}
	d, err := s.device(ctx, app.ID, deviceID)
	if err != nil {
		return deviceView{}, err
	}
	if err := s.store.SetBadge(ctx, app.ID, d.ID, int32(n)); err != nil {
		return deviceView{}, fmt.Errorf("set badge: %w", err)
	}
	return deviceView{Device: d, Badge: int32(n)}, nil
}

// REST.

type (
	deviceAnswer struct {
		DeviceID  string   `json:"device_id"`
		Platform  string   `json:"platform"`
		Alias     string   `json:"alias"`
		Tags      []string `json:"tags"`
		Topics    []string `json:"topics"`
		Badge     int32    `json:"badge"`
		CreatedAt string   `json:"created_at"`
		UpdatedAt string   `json:"updated_at"`
	}
	setAliasBody struct {
		Alias *string `json:"alias"`
	}
	setBadgeBody struct {
		Badge *int64 `json:"badge"`
	}
	updateTagsBody struct {
		DeviceIDs []string `json:"device_ids"`
		Add       []string `json:"add"`
		Remove    []string `json:"remove"`
	}
	updateTagsAnswer struct {
		InvalidDeviceIDs []string `json:"invalid_device_ids"`
	}
)

func newDeviceAnswer(v deviceView) deviceAnswer {
	a := deviceAnswer{
		DeviceID:  v.ID,
		Platform:  v.Platform,
		Alias:     v.Alias,
		Tags:      v.Tags,
		Topics:    v.Topics,
		Badge:     v.Badge,
		CreatedAt: rfc3339(v.CreatedAt),
		UpdatedAt: rfc3339(v.UpdatedAt),
	}
	if a.Tags == nil {
		a.Tags = []string{}
	}
	if a.Topics == nil {
		a.Topics = []string{}
	}
	return a
}

// deviceCall answers a device call with the device.
func (h *rest) deviceCall(w http.ResponseWriter, r *http.Request, call func(app store.App, deviceID string) (deviceView, error)) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	v, err := call(app, r.PathValue("device_id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newDeviceAnswer(v))
}

func (h *rest) getDevice(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		return h.svc.GetDevice(r.Context(), app, id)
	})
}

func (h *rest) setAlias(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		var b setAliasBody
		if err := h.readJSON(w, r, &b); err != nil {
			return deviceView{}, err
		}
		if b.Alias == nil {
			return deviceView{}, invalid(`alias is required ("" clears it)`)
		}
		return h.svc.SetAlias(r.Context(), app, id, *b.Alias)
	})
}

func (h *rest) addTag(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		return h.svc.UpdateDeviceTags(r.Context(), app, id, []string{r.PathValue("tag")}, nil)
	})
}

func (h *rest) removeTag(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		return h.svc.UpdateDeviceTags(r.Context(), app, id, nil, []string{r.PathValue("tag")})
	})
}

func (h *rest) subscribe(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		return h.svc.UpdateTopics(r.Context(), app, id, []string{r.PathValue("topic")}, nil)
	})
}

func (h *rest) unsubscribe(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		return h.svc.UpdateTopics(r.Context(), app, id, nil, []string{r.PathValue("topic")})
	})
}

func (h *rest) setBadge(w http.ResponseWriter, r *http.Request) {
	h.deviceCall(w, r, func(app store.App, id string) (deviceView, error) {
		var b setBadgeBody
		if err := h.readJSON(w, r, &b); err != nil {
			return deviceView{}, err
		}
		if b.Badge == nil {
			return deviceView{}, invalid("badge is required (0 resets it)")
		}
		return h.svc.SetBadge(r.Context(), app, id, *b.Badge)
	})
}

func (h *rest) updateTags(w http.ResponseWriter, r *http.Request) {
	app, ok := h.authApp(w, r)
	if !ok {
		return
	}
	var b updateTagsBody
	if err := h.readJSON(w, r, &b); err != nil {
		h.writeError(w, r, err)
		return
	}
	invalidIDs, err := h.svc.UpdateTags(r.Context(), app, b.DeviceIDs, b.Add, b.Remove)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	if invalidIDs == nil {
		invalidIDs = []string{}
	}
	writeJSON(w, http.StatusOK, updateTagsAnswer{InvalidDeviceIDs: invalidIDs})
}

// gRPC.

func deviceProto(v deviceView) *heraldv1.Device {
	return &heraldv1.Device{
		DeviceId: v.ID, Platform: v.Platform, Alias: v.Alias, Tags: v.Tags, Topics: v.Topics, Badge: v.Badge,
	}
}

func (g *grpcAPI) GetDevice(ctx context.Context, req *heraldv1.GetDeviceRequest) (*heraldv1.Device, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	v, err := g.svc.GetDevice(ctx, app, req.GetDeviceId())
	if err != nil {
		return nil, err
	}
	return deviceProto(v), nil
}

func (g *grpcAPI) SetAlias(ctx context.Context, req *heraldv1.SetAliasRequest) (*heraldv1.Device, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	v, err := g.svc.SetAlias(ctx, app, req.GetDeviceId(), req.GetAlias())
	if err != nil {
		return nil, err
	}
	return deviceProto(v), nil
}

func (g *grpcAPI) UpdateTags(ctx context.Context, req *heraldv1.UpdateTagsRequest) (*heraldv1.UpdateTagsResponse, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	invalidIDs, err := g.svc.UpdateTags(ctx, app, req.GetDeviceIds(), req.GetAdd(), req.GetRemove())
	if err != nil {
		return nil, err
	}
	return &heraldv1.UpdateTagsResponse{InvalidDeviceIds: invalidIDs}, nil
}

func (g *grpcAPI) UpdateTopics(ctx context.Context, req *heraldv1.UpdateTopicsRequest) (*heraldv1.Device, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	v, err := g.svc.UpdateTopics(ctx, app, req.GetDeviceId(), req.GetSubscribe(), req.GetUnsubscribe())
	if err != nil {
		return nil, err
	}
	return deviceProto(v), nil
}

func (g *grpcAPI) SetBadge(ctx context.Context, req *heraldv1.SetBadgeRequest) (*heraldv1.Device, error) {
	app, err := g.authApp(ctx)
	if err != nil {
		return nil, err
	}
	v, err := g.svc.SetBadge(ctx, app, req.GetDeviceId(), int64(req.GetBadge()))
	if err != nil {
		return nil, err
	}
	return deviceProto(v), nil
}
