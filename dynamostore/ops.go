package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// This file holds the few DynamoDB calls everything else is built from.

// getItem reads one item with a strongly consistent read; nil when absent.
func (s *Store) getItem(ctx context.Context, key item) (item, error) {
	out, err := s.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: s.table, Key: key, ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, dbErr(err)
	}
	if len(out.Item) == 0 {
		return nil, nil
	}
	return out.Item, nil
}

// updateItem applies u to the item at key if cond holds. It returns the
// new image (when returnNew) and true; or, without error, false and the
// current image when DynamoDB returned it with the failed condition (real
// DynamoDB does, at no extra cost; emulators may return nil).
func (s *Store) updateItem(ctx context.Context, key item, u *update, cond string, condVals item, returnNew bool) (item, bool, error) {
	in := &dynamodb.UpdateItemInput{
		TableName:                           s.table,
		Key:                                 key,
		UpdateExpression:                    aws.String(u.expr()),
		ConditionExpression:                 optStr(cond),
		ExpressionAttributeValues:           u.values(condVals),
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	}
	in.ExpressionAttributeNames = names(in.UpdateExpression, in.ConditionExpression)
	if len(in.ExpressionAttributeValues) == 0 {
		in.ExpressionAttributeValues = nil
	}
	if returnNew {
		in.ReturnValues = types.ReturnValueAllNew
	}
	out, err := s.db.UpdateItem(ctx, in)
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return ccf.Item, false, nil
	}
	if err != nil {
		return nil, false, dbErr(err)
	}
	return out.Attributes, true, nil
}

// condUpdate applies u to sandbox id if it exists and cond holds; see
// updateItem. A nil newImage pointer skips returning the image.
func (s *Store) condUpdate(ctx context.Context, id string, u *update, cond string, condVals item, newImage *item) (bool, error) {
	full := "attribute_exists(#PK)"
	if cond != "" {
		full += " AND (" + cond + ")"
	}
	it, ok, err := s.updateItem(ctx, sbxKey(id), u, full, condVals, newImage != nil)
	if ok && newImage != nil {
		*newImage = it
	}
	return ok, err
}

// putItem writes it if cond holds; false, without error, when it did not.
func (s *Store) putItem(ctx context.Context, it item, cond string, condVals item) (bool, error) {
	in := &dynamodb.PutItemInput{
		TableName:                 s.table,
		Item:                      it,
		ConditionExpression:       optStr(cond),
		ExpressionAttributeValues: condVals,
	}
	in.ExpressionAttributeNames = names(in.ConditionExpression)
	if len(condVals) == 0 {
		in.ExpressionAttributeValues = nil
	}
	_, err := s.db.PutItem(ctx, in)
	if isConditionFailed(err) {
		return false, nil
	}
	return err == nil, dbErr(err)
}

// deleteItem deletes the item at key if cond holds and returns its old
// image; nil, false, without error, when the condition failed.
func (s *Store) deleteItem(ctx context.Context, key item, cond string, condVals item) (item, bool, error) {
	in := &dynamodb.DeleteItemInput{
		TableName:                 s.table,
		Key:                       key,
		ConditionExpression:       optStr(cond),
		ExpressionAttributeValues: condVals,
		ReturnValues:              types.ReturnValueAllOld,
	}
	in.ExpressionAttributeNames = names(in.ConditionExpression)
	if len(condVals) == 0 {
		in.ExpressionAttributeValues = nil
	}
	out, err := s.db.DeleteItem(ctx, in)
	if isConditionFailed(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, dbErr(err)
	}
	return out.Attributes, true, nil
}

// queryAll runs in through every page and calls fn for each item.
func (s *Store) queryAll(ctx context.Context, in *dynamodb.QueryInput, fn func(item) error) error {
	in.ExpressionAttributeNames = names(in.KeyConditionExpression, in.FilterExpression, in.ProjectionExpression)
	p := dynamodb.NewQueryPaginator(s.db, in)
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return dbErr(err)
		}
		for _, it := range out.Items {
			if err := fn(it); err != nil {
				return err
			}
		}
	}
	return nil
}

// countAll counts the items in matches through every page (Select=COUNT:
// DynamoDB still reads, and bills, every item it counts).
func (s *Store) countAll(ctx context.Context, in *dynamodb.QueryInput) (int, error) {
	in.Select = types.SelectCount
	in.ExpressionAttributeNames = names(in.KeyConditionExpression, in.FilterExpression)
	p := dynamodb.NewQueryPaginator(s.db, in)
	n := 0
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return 0, dbErr(err)
		}
		n += int(out.Count)
	}
	return n, nil
}

// statusQuery is a StatusIndex query for one status; filter and projection
// are optional and may use further values.
func (s *Store) statusQuery(status broker.Status, filter, projection string, vals item) *dynamodb.QueryInput {
	v := item{":qstatus": avS(string(status))}
	for k, x := range vals {
		v[k] = x
	}
	return &dynamodb.QueryInput{
		TableName:                 s.table,
		IndexName:                 aws.String(s.cfg.StatusIndex),
		KeyConditionExpression:    aws.String("#status = :qstatus"),
		FilterExpression:          optStr(filter),
		ProjectionExpression:      optStr(projection),
		ExpressionAttributeValues: v,
	}
}

// event appends one record to a sandbox's audit trail. img is the item
// image the transition produced (ALL_NEW); its evt_gen and evt_seq give the
// event's position. The event is written after the state change, so a crash
// in between loses it; a failure to write it is logged, not returned,
// because the state change it describes has already happened.
func (s *Store) event(ctx context.Context, id string, img item, from, to broker.Status, at time.Time) {
	gen, seq := getS(img, aEvtGen), getN(img, aEvtSeq)
	if gen == "" {
		gen = newGeneration()
	}
	s.writeEvent(ctx, id, gen, seq, from, to, at)
}

// deletedEvent records the removal of a sandbox from its old image.
func (s *Store) deletedEvent(ctx context.Context, id string, old item, at time.Time) {
	gen, seq := getS(old, aEvtGen), getN(old, aEvtSeq)+1
	if gen == "" {
		gen = newGeneration()
	}
	s.writeEvent(ctx, id, gen, seq, broker.Status(getS(old, aStatus)), broker.StatusDeleted, at)
}

func (s *Store) writeEvent(ctx context.Context, id, gen string, seq int64, from, to broker.Status, at time.Time) {
	a := broker.ActorFrom(ctx)
	ev := item{
		aPK:        avS(evtPrefix + id),
		aSK:        avS(fmt.Sprintf("%s#%010d", gen, seq)),
		"evt_from": avS(string(from)),
		"evt_to":   avS(string(to)),
		"at":       avN(unix(at)),
	}
	if a.Name != "" {
		ev["actor"] = avS(a.Name)
	}
	if a.RequestID != "" {
		ev["request_id"] = avS(a.RequestID)
	}
	// A canceled caller must not lose the record of a change that happened.
	ctx = context.WithoutCancel(ctx)
	if _, err := s.putItem(ctx, ev, "", nil); err != nil {
		s.log.Warn("audit event lost", "sandbox_id", id, "from", from, "to", to, "error", err)
	}
}
