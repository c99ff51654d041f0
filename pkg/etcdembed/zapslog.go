package etcdembed

import (
	"context"
	"log/slog"
	"slices"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ZapLogger returns a zap logger that writes the entries level enables to
// l, so etcd's server and client log through Herald's slog handler. Zap
// fields become slog attributes; the logger name becomes the "logger"
// attribute. level may be a zapcore.Level or a zap.AtomicLevel.
func ZapLogger(l *slog.Logger, level zapcore.LevelEnabler) *zap.Logger {
	return zapLogger(l, level, nil)
}

// zapLogger is ZapLogger that logs the messages in demote at debug level.
func zapLogger(l *slog.Logger, level zapcore.LevelEnabler, demote map[string]bool) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return zap.New(&slogCore{h: l.Handler(), level: level, demote: demote})
}

type slogCore struct {
	h      slog.Handler
	level  zapcore.LevelEnabler
	demote map[string]bool
	attrs  []slog.Attr
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{h: c.h, level: c.level, demote: c.demote, attrs: append(slices.Clip(c.attrs), attrsOf(fields)...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	lvl := slogLevel(e.Level)
	if c.demote[e.Message] {
		lvl = slog.LevelDebug
	}
	ctx := context.Background() // zap carries no context
	if !c.h.Enabled(ctx, lvl) {
		return nil
	}
	r := slog.NewRecord(e.Time, lvl, e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(c.attrs...)
	r.AddAttrs(attrsOf(fields)...)
	return c.h.Handle(ctx, r)
}

func (c *slogCore) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func attrsOf(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
