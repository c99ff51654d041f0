package api

import (
	"context"
	"sync"
	"time"

	"github.com/heraldpush/herald/pkg/store"
)

// appCacheTTL bounds how long a looked-up app is reused: a change of an
// app's settings (rate limit, daily cap) made through another api instance
// takes effect here within it. An unknown key is never cached.
const appCacheTTL = 30 * time.Second

// appCache remembers apps by key for the authentication of app calls, which
// would otherwise read the store on every send.
type appCache struct {
	mu   sync.Mutex
	apps map[string]cachedApp
}

type cachedApp struct {
	app     store.App
	expires time.Time
}

func (c *appCache) get(ctx context.Context, st store.Registry, key string, now time.Time) (store.App, error) {
	c.mu.Lock()
	if e, ok := c.apps[key]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.app, nil
	}
	c.mu.Unlock()
	app, err := st.AppByKey(ctx, key)
	if err != nil {
		return store.App{}, err
	}
	c.mu.Lock()
	if c.apps == nil || len(c.apps) > 10000 {
		c.apps = make(map[string]cachedApp)
	}
	c.apps[key] = cachedApp{app: app, expires: now.Add(appCacheTTL)}
	c.mu.Unlock()
	return app, nil
}

// forget drops the app with this key, so the next call reads its new
// settings.
func (c *appCache) forget(key string) {
	c.mu.Lock()
	delete(c.apps, key)
	c.mu.Unlock()
}
