package cassandrastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/heraldpush/herald"
	schema "github.com/heraldpush/herald/deploy/cassandra"
)

// MigrateConfig configures Migrate.
type MigrateConfig struct {
	// Hosts are the contact points, "host" or "host:port".
	Hosts []string
	// Keyspace to create if missing and migrate.
	Keyspace string
	// ReplicationFactor of the keyspace when Migrate creates it
	// (SimpleStrategy); default 1. An existing keyspace is left as it is.
	ReplicationFactor int
}

// migrateTimeout bounds one schema statement (each waits for schema
// agreement across the cluster).
const migrateTimeout = 60 * time.Second

// migration is one deploy/cassandra/NNN_name.cql file.
type migration struct {
	version int
	name    string
	stmts   []string
}

var migrationFile = regexp.MustCompile(`^([0-9]+)_([A-Za-z0-9_]+)\.cql$`)

// Migrate creates the keyspace if it is missing and applies, in version
// order, every migration of deploy/cassandra not yet recorded in the
// keyspace's schema_migrations table, recording each once it has run.
// Migrations are re-runnable, so one cut short is applied again whole;
// running Migrate on an up-to-date keyspace changes nothing.
//
// Run it from one process at a time (a deploy step): Cassandra applies
// concurrent schema changes of the same table from different nodes
// badly.
func Migrate(ctx context.Context, cfg MigrateConfig) error {
	return migrate(ctx, cfg, schema.FS)
}

// migrate is Migrate with the migrations of fsys.
func migrate(ctx context.Context, cfg MigrateConfig, fsys fs.FS) error {
	if len(cfg.Hosts) == 0 {
		return fmt.Errorf("cassandrastore: migrate: no hosts: %w", herald.ErrInvalidArgument)
	}
	if !keyspaceName.MatchString(cfg.Keyspace) {
		return fmt.Errorf("cassandrastore: migrate: bad keyspace name %q: %w", cfg.Keyspace, herald.ErrInvalidArgument)
	}
	rf := cfg.ReplicationFactor
	if rf <= 0 {
		rf = 1
	}
	ms, err := migrations(fsys)
	if err != nil {
		return fmt.Errorf("cassandrastore: migrate: %w", err)
	}
	discard := slog.New(slog.DiscardHandler)

	// The keyspace first, from a session bound to none.
	cluster := newCluster(cfg.Hosts, migrateTimeout, discard)
	cluster.Consistency = gocql.Quorum
	session, err := createSession(ctx, cluster)
	if err != nil {
		return fmt.Errorf("cassandrastore: migrate: %w", err)
	}
	err = retry(ctx, func() error {
		return session.Query(fmt.Sprintf(
			`CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': %d}`,
			cfg.Keyspace, rf)).ExecContext(ctx)
	})
	session.Close()
	if err != nil {
		return fail("migrate: create keyspace "+cfg.Keyspace, err)
	}

	cluster = newCluster(cfg.Hosts, migrateTimeout, discard)
	cluster.Keyspace = cfg.Keyspace
	cluster.Consistency = gocql.Quorum
	if session, err = createSession(ctx, cluster); err != nil {
		return fmt.Errorf("cassandrastore: migrate: %w", err)
	}
	defer session.Close()
	err = retry(ctx, func() error {
		return session.Query(`CREATE TABLE IF NOT EXISTS schema_migrations (
			version int PRIMARY KEY, name text, applied_at timestamp)`).ExecContext(ctx)
	})
	if err != nil {
		return fail("migrate: create schema_migrations", err)
	}
	applied := map[int]bool{}
	err = retry(ctx, func() error {
		clear(applied)
		iter := session.Query(`SELECT version FROM schema_migrations`).IterContext(ctx)
		var v int
		for iter.Scan(&v) {
			applied[v] = true
		}
		return iter.Close()
	})
	if err != nil {
		return fail("migrate: read schema_migrations", err)
	}
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		op := fmt.Sprintf("migrate: %03d_%s", m.version, m.name)
		for _, stmt := range m.stmts {
			if err := retry(ctx, func() error { return session.Query(stmt).ExecContext(ctx) }); err != nil {
				return fail(op, err)
			}
		}
		if fill := backfills[m.version]; fill != nil {
			if err := fill(ctx, session); err != nil {
				return fail(op+": backfill", err)
			}
		}
		err := retry(ctx, func() error {
			return session.Query(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, time.Now()).ExecContext(ctx)
		})
		if err != nil {
			return fail(op+": record", err)
		}
	}
	return nil
}

// backfills are data steps a migration needs after its statements, by
// version. Like the statements they are re-runnable: a migration cut
// short runs its backfill again.
var backfills = map[int]func(ctx context.Context, session *gocql.Session) error{
	2: backfillAliases,
}

// backfillAliases writes the alias index (002) for devices stored before
// it existed: one pass over the devices table, paged.
func backfillAliases(ctx context.Context, session *gocql.Session) error {
	var pageState []byte
	for {
		type row struct{ app, dev, alias string }
		var rows []row
		var next []byte
		err := retry(ctx, func() error {
			rows = rows[:0]
			iter := session.Query(`SELECT app_id, device_id, alias FROM devices`).
				PageSize(1000).PageState(pageState).IterContext(ctx)
			next = iter.PageState()
			var r row
			for range iter.NumRows() {
				if !iter.Scan(&r.app, &r.dev, &r.alias) {
					break
				}
				if r.alias != "" {
					rows = append(rows, r)
				}
			}
			return iter.Close()
		})
		if err != nil {
			return err
		}
		for _, r := range rows {
			err := retry(ctx, func() error {
				return session.Query(cqlInsertAlias, r.app, r.alias, r.dev).ExecContext(ctx)
			})
			if err != nil {
				return err
			}
		}
		if len(next) == 0 {
			return nil
		}
		pageState = next
	}
}

// migrations parses every NNN_name.cql of fsys, in version order.
func migrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.cql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, name := range names {
		sm := migrationFile.FindStringSubmatch(path.Base(name))
		if sm == nil {
			return nil, fmt.Errorf("migration file %s: name is not NNN_name.cql", name)
		}
		v, err := strconv.Atoi(sm[1])
		if err != nil {
			return nil, fmt.Errorf("migration file %s: %w", name, err)
		}
		src, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		stmts, err := splitStatements(string(src))
		if err != nil {
			return nil, fmt.Errorf("migration file %s: %w", name, err)
		}
		out = append(out, migration{version: v, name: sm[2], stmts: stmts})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("two migrations with version %d", out[i].version)
		}
	}
	return out, nil
}

// splitStatements splits CQL source into its semicolon-terminated
// statements, dropping comments (--, // and /* */) and blank statements.
// Semicolons inside 'strings', "identifiers" and $$bodies$$ do not split.
func splitStatements(src string) ([]string, error) {
	var (
		out []string
		cur strings.Builder
	)
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case strings.HasPrefix(src[i:], "--"), strings.HasPrefix(src[i:], "//"):
			end := strings.IndexByte(src[i:], '\n')
			if end < 0 {
				i = len(src)
				continue
			}
			i += end // keep the newline as whitespace
		case strings.HasPrefix(src[i:], "/*"):
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, errors.New("unterminated /* comment")
			}
			cur.WriteByte(' ')
			i += 2 + end + 2
		case strings.HasPrefix(src[i:], "$$"):
			end := strings.Index(src[i+2:], "$$")
			if end < 0 {
				return nil, errors.New("unterminated $$ string")
			}
			cur.WriteString(src[i : i+2+end+2])
			i += 2 + end + 2
		case c == '\'' || c == '"':
			// A quote inside is written twice ('it''s').
			j := i + 1
			for {
				k := strings.IndexByte(src[j:], c)
				if k < 0 {
					return nil, fmt.Errorf("unterminated %c quote", c)
				}
				j += k + 1
				if j < len(src) && src[j] == c {
					j++
					continue
				}
				break
			}
			cur.WriteString(src[i:j])
			i = j
		case c == ';':
			flush()
			i++
		default:
			cur.WriteByte(c)
			i++
		}
	}
	flush()
	return out, nil
}
