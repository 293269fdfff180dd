package postgres

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestMigrateConcurrently starts five replicas at once on a fresh schema,
// some through Migrate (the migrate subcommand), some through Open: all
// succeed and each migration is applied once.
func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	schema, u := mustSchema(t)
	migrateURL := withParam(t, u, "pool_max_conns", "2") // understood, not sent to the server
	errs := make([]error, 5)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if i%2 == 0 {
				errs[i] = Migrate(ctx, migrateURL)
				return
			}
			s, err := Open(ctx, u, Options{Logger: quietLog})
			if err == nil {
				err = s.Ping(ctx)
				s.Close()
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}

	migrations, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	admin := mustAdmin(t)
	rows, err := admin.Query(ctx, `SELECT version FROM `+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+` ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	if len(versions) != len(migrations) {
		t.Fatalf("schema_migrations = %v, want one row per migration (%d)", versions, len(migrations))
	}
	for i, m := range migrations {
		if int(versions[i]) != m.version {
			t.Fatalf("schema_migrations = %v, want version %d at %d", versions, m.version, i)
		}
	}

	// A later start finds nothing to do.
	if err := Migrate(ctx, u); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, u, Options{})
}
