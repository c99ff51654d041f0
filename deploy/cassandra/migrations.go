// Package cassandra holds Herald's versioned CQL schema for the Cassandra
// store. Each file NNN_name.cql is one migration, applied once and in
// order by cassandrastore.Migrate; FS embeds them so the binary carries its
// schema. Statements are separated by semicolons, refer to tables without a
// keyspace (Migrate runs them in the configured keyspace) and are written to
// be re-runnable (IF NOT EXISTS), so a migration cut short is simply
// applied again.
package cassandra

import "embed"

// FS holds every migration file, named NNN_name.cql.
//
//go:embed *.cql
var FS embed.FS
