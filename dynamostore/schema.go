package dynamostore

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// MigrateResult says what Migrate changed.
type MigrateResult struct {
	CreatedTable   bool
	CreatedIndexes []string
	// Backfilled counts available sandboxes written without an
	// avail_shard (by the Python service) that were given one.
	Backfilled int
}

// indexSpec is one global secondary index the store needs.
type indexSpec struct {
	name       string
	hash, rng  string
	hashType   types.ScalarAttributeType
	rngType    types.ScalarAttributeType
	projection types.ProjectionType
}

func (s *Store) indexSpecs() []indexSpec {
	return []indexSpec{
		{s.cfg.StatusIndex, aStatus, aAllocatedAt, types.ScalarAttributeTypeS, types.ScalarAttributeTypeN, types.ProjectionTypeAll},
		{s.cfg.TrackIndex, aOwner, aAllocatedAt, types.ScalarAttributeTypeS, types.ScalarAttributeTypeN, types.ProjectionTypeAll},
		{s.cfg.IdempotencyIndex, aIdemKey, aAllocatedAt, types.ScalarAttributeTypeS, types.ScalarAttributeTypeN, types.ProjectionTypeAll},
		{s.cfg.AvailableIndex, aAvailShard, aName, types.ScalarAttributeTypeS, types.ScalarAttributeTypeS, types.ProjectionTypeKeysOnly},
	}
}

func (ix indexSpec) attributeDefinitions() []types.AttributeDefinition {
	return []types.AttributeDefinition{
		{AttributeName: aws.String(ix.hash), AttributeType: ix.hashType},
		{AttributeName: aws.String(ix.rng), AttributeType: ix.rngType},
	}
}

func (ix indexSpec) keySchema() []types.KeySchemaElement {
	return []types.KeySchemaElement{
		{AttributeName: aws.String(ix.hash), KeyType: types.KeyTypeHash},
		{AttributeName: aws.String(ix.rng), KeyType: types.KeyTypeRange},
	}
}

// Migrate makes the table ready for this store, for `sandbox-broker
// migrate`: it creates the table (on-demand billing) with every index when
// it does not exist; on an existing table (e.g. the Python service's) it
// adds the missing indexes one at a time and waits for each to become
// active; then it gives every available sandbox without an avail_shard one
// (items the Python service wrote), so that allocation can see them.
// Migrate is idempotent. Returns EUNAVAILABLE when DynamoDB cannot be
// reached.
func Migrate(ctx context.Context, cfg Config) (MigrateResult, error) {
	s, err := newStore(ctx, cfg)
	if err != nil {
		return MigrateResult{}, err
	}
	return s.Migrate(ctx)
}

// Migrate does what the package-level Migrate does, on this store's table.
// Returns EUNAVAILABLE when DynamoDB cannot be reached.
func (s *Store) Migrate(ctx context.Context) (MigrateResult, error) {
	var res MigrateResult
	desc, err := s.describe(ctx)
	if err != nil {
		return res, err
	}
	if desc == nil {
		if err := s.CreateTable(ctx); err != nil {
			return res, err
		}
		res.CreatedTable = true
		s.log.Info("dynamodb table created", "table", s.cfg.Table)
	} else {
		res.CreatedIndexes, err = s.addMissingIndexes(ctx, desc)
		if err != nil {
			return res, err
		}
	}
	res.Backfilled, err = s.backfillShards(ctx)
	if err != nil {
		return res, err
	}
	if res.Backfilled > 0 {
		s.log.Info("available sandboxes given an allocation shard", "table", s.cfg.Table, "count", res.Backfilled)
	}
	return res, nil
}

// CreateTable creates the table with every index, on-demand billing, and
// waits until it is active. Returns EUNAVAILABLE, or an error when the
// table already exists.
func (s *Store) CreateTable(ctx context.Context) error {
	defs := map[string]types.ScalarAttributeType{aPK: types.ScalarAttributeTypeS, aSK: types.ScalarAttributeTypeS}
	var gsis []types.GlobalSecondaryIndex
	for _, ix := range s.indexSpecs() {
		defs[ix.hash], defs[ix.rng] = ix.hashType, ix.rngType
		gsis = append(gsis, types.GlobalSecondaryIndex{
			IndexName:  aws.String(ix.name),
			KeySchema:  ix.keySchema(),
			Projection: &types.Projection{ProjectionType: ix.projection},
		})
	}
	var attrs []types.AttributeDefinition
	for name, typ := range defs {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(name), AttributeType: typ})
	}
	_, err := s.db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            s.table,
		BillingMode:          types.BillingModePayPerRequest,
		AttributeDefinitions: attrs,
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String(aPK), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String(aSK), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: gsis,
	})
	if err != nil {
		return dbErr(err)
	}
	return s.waitActive(ctx, "")
}

// describe returns the table description, nil when the table is missing.
func (s *Store) describe(ctx context.Context) (*types.TableDescription, error) {
	out, err := s.db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: s.table})
	if isTableMissing(err) {
		return nil, nil
	}
	if err != nil {
		return nil, dbErr(err)
	}
	return out.Table, nil
}

func findIndex(desc *types.TableDescription, name string) *types.GlobalSecondaryIndexDescription {
	for i := range desc.GlobalSecondaryIndexes {
		if aws.ToString(desc.GlobalSecondaryIndexes[i].IndexName) == name {
			return &desc.GlobalSecondaryIndexes[i]
		}
	}
	return nil
}

// checkIndex reports an index whose keys differ from what the store needs.
func checkIndex(got *types.GlobalSecondaryIndexDescription, want indexSpec) error {
	keys := map[types.KeyType]string{}
	for _, k := range got.KeySchema {
		keys[k.KeyType] = aws.ToString(k.AttributeName)
	}
	if keys[types.KeyTypeHash] != want.hash || keys[types.KeyTypeRange] != want.rng {
		return fmt.Errorf("dynamostore: index %s is keyed on (%s, %s), want (%s, %s)",
			want.name, keys[types.KeyTypeHash], keys[types.KeyTypeRange], want.hash, want.rng)
	}
	return nil
}

// addMissingIndexes creates, one at a time (DynamoDB allows one index
// creation per table at once), every index the table lacks.
func (s *Store) addMissingIndexes(ctx context.Context, desc *types.TableDescription) ([]string, error) {
	var created []string
	for _, ix := range s.indexSpecs() {
		if got := findIndex(desc, ix.name); got != nil {
			if err := checkIndex(got, ix); err != nil {
				return created, err
			}
			if got.IndexStatus != types.IndexStatusActive {
				if err := s.waitActive(ctx, ix.name); err != nil {
					return created, err
				}
			}
			continue
		}
		create := &types.CreateGlobalSecondaryIndexAction{
			IndexName:  aws.String(ix.name),
			KeySchema:  ix.keySchema(),
			Projection: &types.Projection{ProjectionType: ix.projection},
		}
		if desc.BillingModeSummary == nil || desc.BillingModeSummary.BillingMode != types.BillingModePayPerRequest {
			if pt := desc.ProvisionedThroughput; pt != nil {
				create.ProvisionedThroughput = &types.ProvisionedThroughput{
					ReadCapacityUnits: pt.ReadCapacityUnits, WriteCapacityUnits: pt.WriteCapacityUnits,
				}
			}
		}
		s.log.Info("creating dynamodb index; DynamoDB backfills it from existing items, which can take minutes",
			"table", s.cfg.Table, "index", ix.name)
		_, err := s.db.UpdateTable(ctx, &dynamodb.UpdateTableInput{
			TableName:                   s.table,
			AttributeDefinitions:        ix.attributeDefinitions(),
			GlobalSecondaryIndexUpdates: []types.GlobalSecondaryIndexUpdate{{Create: create}},
		})
		if err != nil {
			return created, dbErr(err)
		}
		if err := s.waitActive(ctx, ix.name); err != nil {
			return created, err
		}
		created = append(created, ix.name)
	}
	return created, nil
}

// waitActive polls until the table (index == "") or the named index is
// active, or ctx ends.
func (s *Store) waitActive(ctx context.Context, index string) error {
	delay := 50 * time.Millisecond
	for {
		desc, err := s.describe(ctx)
		if err != nil {
			return err
		}
		if desc != nil && desc.TableStatus == types.TableStatusActive {
			if index == "" {
				return nil
			}
			if ix := findIndex(desc, index); ix != nil && ix.IndexStatus == types.IndexStatusActive {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// verifySchema checks that the table and every index exist and are active.
func (s *Store) verifySchema(ctx context.Context) error {
	desc, err := s.describe(ctx)
	if err != nil {
		return err
	}
	if desc == nil {
		return fmt.Errorf("dynamostore: table %s does not exist; run `sandbox-broker migrate`", s.cfg.Table)
	}
	for _, ix := range s.indexSpecs() {
		got := findIndex(desc, ix.name)
		if got == nil {
			return fmt.Errorf("dynamostore: table %s has no index %s; run `sandbox-broker migrate`", s.cfg.Table, ix.name)
		}
		if err := checkIndex(got, ix); err != nil {
			return err
		}
		if got.IndexStatus != types.IndexStatusActive {
			return broker.Unavailable(fmt.Errorf("dynamostore: index %s of table %s is %s, not yet ACTIVE", ix.name, s.cfg.Table, got.IndexStatus))
		}
	}
	return nil
}

// backfillShards gives every available sandbox without an avail_shard one.
// It reads the available partition of StatusIndex once (paginated).
func (s *Store) backfillShards(ctx context.Context) (int, error) {
	var ids []string
	err := s.queryAll(ctx, &dynamodb.QueryInput{
		TableName:                 s.table,
		IndexName:                 aws.String(s.cfg.StatusIndex),
		KeyConditionExpression:    aws.String("#status = :available"),
		FilterExpression:          aws.String("attribute_not_exists(#avail_shard) AND begins_with(#PK, :sbx)"),
		ProjectionExpression:      aws.String("#PK"),
		ExpressionAttributeValues: item{":available": avS(string(broker.StatusAvailable)), ":sbx": avS(sbxPrefix)},
	}, func(it item) error {
		ids = append(ids, idFromItem(it))
		return nil
	})
	if err != nil {
		return 0, err
	}
	counts := make([]int, len(ids))
	err = parallel(ctx, len(ids), s.cfg.WriteConcurrency, func(ctx context.Context, i int) error {
		ok, err := s.condUpdate(ctx, ids[i], newUpdate().set(aAvailShard, avS(randomShard())),
			"#status = :want AND attribute_not_exists(#avail_shard) AND attribute_exists(#name)",
			item{":want": avS(string(broker.StatusAvailable))}, nil)
		if ok {
			counts[i] = 1
		}
		return err
	})
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, err
}
