// Package dynamostore is the broker.Store on one DynamoDB table, shared by
// any number of replicas. It keeps the Python service's storage layout
// (SBX#<id>/META items, StatusIndex, TrackIndex, IdempotencyIndex) so that an
// existing table keeps working, and adds item types and one sparse index of
// its own. Every state change is a single conditional write; nothing uses
// transactions. PROTOCOL.md in this directory describes the layout, the
// allocation and idempotency protocol, and the cost of each operation.
package dynamostore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	broker "github.com/sandbox-broker/broker"
)

// Defaults for Config. The table and index names are the Python service's.
const (
	DefaultTable            = "SandboxPool"
	DefaultRegion           = "us-east-1"
	DefaultStatusIndex      = "StatusIndex"
	DefaultTrackIndex       = "TrackIndex"
	DefaultIdempotencyIndex = "IdempotencyIndex"
	DefaultAvailableIndex   = "AvailableIndex"
	DefaultMaxAttempts      = 6
	DefaultMaxBackoff       = 2 * time.Second
	DefaultRecoverAfter     = 2 * time.Second
	DefaultWriteConcurrency = 16
)

// Config says which table to use and how to reach it.
type Config struct {
	// Table is the table name (env DDB_TABLE_NAME). Default DefaultTable.
	Table string
	// Endpoint overrides the DynamoDB endpoint (env DDB_ENDPOINT_URL), e.g.
	// http://127.0.0.1:8000 for DynamoDB Local or dynalite. When set, static
	// dummy credentials ("local") are used.
	Endpoint string
	// Region is the AWS region (env AWS_REGION). Default us-east-1.
	Region string

	// Index names. The first three exist on the Python service's table;
	// AvailableIndex is added by Migrate.
	StatusIndex      string // hash status, range allocated_at
	TrackIndex       string // hash allocated_to_track, range allocated_at
	IdempotencyIndex string // hash idempotency_key, range allocated_at
	AvailableIndex   string // hash avail_shard, range name; sparse, KEYS_ONLY

	// CreateIfMissing makes Open run Migrate first: create the table and
	// indexes if missing. For tests and the demo; production runs
	// `sandbox-broker migrate` once.
	CreateIfMissing bool

	// MaxAttempts bounds the SDK's retries of throttled and 5xx calls
	// (total attempts per call). Default 6.
	MaxAttempts int
	// MaxBackoff caps the SDK's delay between two attempts. Default 2 s.
	MaxBackoff time.Duration
	// RecoverAfter is how old a pending idempotency reservation must be
	// before a duplicate request stops waiting for the original and
	// completes the allocation itself (safe at any age; this only avoids
	// needless work). Default 2 s.
	RecoverAfter time.Duration
	// WriteConcurrency bounds the parallel writes of bulk operations (sync,
	// stale marking, bulk delete). Default 16.
	WriteConcurrency int
	// LegacyLabDuration is the lab duration assumed for allocations made by
	// the Python service (items without lab_duration_sec). Zero means: the
	// item's lab_duration_hours, or 4 h when absent, as the Python service
	// computed expires_at.
	LegacyLabDuration time.Duration

	// Logger receives warnings (e.g. a lost audit event). Default: discard.
	Logger *slog.Logger
	// HTTPClient overrides the HTTP client (tests). Default: a client with
	// a connection pool sized for many concurrent requests.
	HTTPClient *http.Client
}

func (c *Config) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.StatusIndex == "" {
		c.StatusIndex = DefaultStatusIndex
	}
	if c.TrackIndex == "" {
		c.TrackIndex = DefaultTrackIndex
	}
	if c.IdempotencyIndex == "" {
		c.IdempotencyIndex = DefaultIdempotencyIndex
	}
	if c.AvailableIndex == "" {
		c.AvailableIndex = DefaultAvailableIndex
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.RecoverAfter <= 0 {
		c.RecoverAfter = DefaultRecoverAfter
	}
	if c.WriteConcurrency <= 0 {
		c.WriteConcurrency = DefaultWriteConcurrency
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Store is a broker.Store on one DynamoDB table. It is safe for concurrent
// use, and any number of Stores (in any number of processes) may share the
// table. Use Open.
type Store struct {
	cfg   Config
	db    *dynamodb.Client
	table *string
	log   *slog.Logger
}

var _ broker.Store = (*Store)(nil)

// Open connects to the table described by cfg and checks that it has every
// index the store needs. With cfg.CreateIfMissing it first creates what is
// missing (see Migrate). Returns EUNAVAILABLE when DynamoDB cannot be
// reached, and an error naming the missing table or index otherwise.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	s, err := newStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if s.cfg.CreateIfMissing {
		if _, err := s.Migrate(ctx); err != nil {
			return nil, err
		}
	}
	if err := s.verifySchema(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func newStore(ctx context.Context, cfg Config) (*Store, error) {
	cfg.setDefaults()
	awsHTTP := awshttp.NewBuildableClient().
		WithTimeout(30 * time.Second).
		WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = 512
			t.MaxIdleConnsPerHost = 512
			t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		})
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.Region),
		config.WithHTTPClient(awsHTTP),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				// Conditional-write conflicts are answers, not failures;
				// a client-side retry quota would turn a burst of
				// throttling into errors for every caller of this replica.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Endpoint != "" {
		opts = append(opts,
			config.WithBaseEndpoint(cfg.Endpoint),
			config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("local", "local", "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("dynamostore: load AWS configuration: %w", err)
	}
	return &Store{
		cfg: cfg,
		db: dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
			if cfg.HTTPClient != nil {
				o.HTTPClient = cfg.HTTPClient
			}
		}),
		table: aws.String(cfg.Table),
		log:   cfg.Logger,
	}, nil
}

// Close releases nothing and never fails: the store holds only an HTTP
// connection pool, whose idle connections time out on their own.
func (s *Store) Close() error { return nil }

// Ping checks that the table can be read with one GetItem of a key that
// never exists. Returns EUNAVAILABLE.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: s.table,
		Key:       itemKey("PING", "PING"),
	})
	if err != nil {
		return broker.Unavailable(err)
	}
	return nil
}

// dbErr maps an SDK error to a domain error: callers see EUNAVAILABLE (or
// EINTERNAL for a request DynamoDB rejects as malformed, which is a bug
// here); the cause stays in the chain for the logs and is never shown to
// clients.
func dbErr(err error) error {
	if err == nil {
		return nil
	}
	var e *broker.Error
	if errors.As(err, &e) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorCode() == "ValidationException" {
		return &broker.Error{Code: broker.EINTERNAL, Message: "an internal error occurred", Err: err}
	}
	return broker.Unavailable(err)
}

// isConditionFailed reports whether err is a failed condition of a
// conditional write.
func isConditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

// isTableMissing reports whether err says the table (or index) does not exist.
func isTableMissing(err error) bool {
	var rnf *types.ResourceNotFoundException
	return errors.As(err, &rnf)
}

// nameRef matches the #name placeholders of an expression.
var nameRef = regexp.MustCompile(`#[A-Za-z_][A-Za-z0-9_]*`)

// names builds ExpressionAttributeNames for every #attr placeholder used in
// exprs: "#status" stands for the attribute "status". Every attribute is
// referenced through a placeholder, so reserved words never matter.
func names(exprs ...*string) map[string]string {
	out := map[string]string{}
	for _, e := range exprs {
		if e == nil {
			continue
		}
		for _, ref := range nameRef.FindAllString(*e, -1) {
			out[ref] = ref[1:]
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// optStr returns nil for an empty expression, for optional SDK fields.
func optStr(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}

// newToken returns 16 random bytes in hex: nonces and generation ids.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// parallel runs fn(i) for i in [0, n) on at most workers goroutines and
// returns the first error; after an error the remaining calls are skipped.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	if n == 0 {
		return nil
	}
	workers = min(workers, n)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	for w := 0; w < workers; w++ {
		<-done
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}
