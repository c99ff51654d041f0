package store

import (
	"context"
	"sync"
	"time"
)

// AppCacheTTL bounds how long a looked-up app is reused: a change of an
// app's settings (rate limit, daily cap) or key made through another
// process takes effect within it. An unknown key is never cached.
const AppCacheTTL = 30 * time.Second

// AppCache remembers apps by key for the authentication of app calls and
// device handshakes, which would otherwise read the store every time. The
// zero value is ready to use.
type AppCache struct {
	mu   sync.Mutex
	apps map[string]cachedApp
}

type cachedApp struct {
	app     App
	expires time.Time
}

// Get returns the app with this key from the cache, or from reg (and
// caches it for AppCacheTTL).
func (c *AppCache) Get(ctx context.Context, reg Registry, key string, now time.Time) (App, error) {
	c.mu.Lock()
	if e, ok := c.apps[key]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.app, nil
	}
	c.mu.Unlock()
	app, err := reg.AppByKey(ctx, key)
	if err != nil {
		return App{}, err
	}
	c.mu.Lock()
	if c.apps == nil || len(c.apps) > 10000 {
		c.apps = make(map[string]cachedApp)
	}
	c.apps[key] = cachedApp{app: app, expires: now.Add(AppCacheTTL)}
	c.mu.Unlock()
	return app, nil
}

// Forget drops the app with this key, so the next call reads its new
// settings.
func (c *AppCache) Forget(key string) {
	c.mu.Lock()
	delete(c.apps, key)
	c.mu.Unlock()
}
