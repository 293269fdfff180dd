package dynamostore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// maxListLimit is the largest page, and the page size of a limit out of
// range (as the SQL stores do).
const maxListLimit = 100

// listPath is how List reads: the most selective index the filter allows.
type listPath string

const (
	pathOwner  listPath = "owner"  // TrackIndex, hash allocated_to_track
	pathStatus listPath = "status" // StatusIndex, hash status
	pathScan   listPath = "scan"   // the table, filtered to SBX# items
)

func choosePath(f broker.ListFilter) listPath {
	switch {
	case f.Owner != "":
		return pathOwner
	case f.Status != "":
		return pathStatus
	}
	return pathScan
}

// keyAttrs are the attributes of a LastEvaluatedKey on each path.
func keyAttrs(p listPath) []string {
	switch p {
	case pathOwner:
		return []string{aOwner, aAllocatedAt, aPK, aSK}
	case pathStatus:
		return []string{aStatus, aAllocatedAt, aPK, aSK}
	}
	return []string{aPK, aSK}
}

// List returns one page of at most f.Limit (1..100; 100 otherwise)
// sandboxes matching f. It queries TrackIndex
// when f has an owner, StatusIndex when it has a status, and otherwise
// scans the table (skipping items that are not sandboxes); the other
// conditions are filters, so a selective filter without owner or status
// reads the whole table over its pages. Sandboxes come in the order of
// the index read, not by ID; pages cover every matching item exactly once
// for a table that does not change meanwhile. Cursor is empty on the last
// page. Returns EINVALID for a malformed cursor or one from another
// filter, EUNAVAILABLE.
func (s *Store) List(ctx context.Context, f broker.ListFilter) (broker.ListPage, error) {
	limit := f.Limit
	if limit < 1 || limit > maxListLimit {
		limit = maxListLimit
	}
	path := choosePath(f)
	start, err := decodeCursor(f.Cursor, path, f)
	if err != nil {
		return broker.ListPage{}, err
	}
	filter, vals := listFilter(f, path)
	var got []item
	for {
		need := limit + 1 - len(got)
		pageLimit := int32(need)
		if filter != "" {
			pageLimit = int32(min(max(need, 100), 1000))
		}
		items, next, err := s.listPage(ctx, path, f, filter, vals, start, pageLimit)
		if err != nil {
			return broker.ListPage{}, err
		}
		got = append(got, items...)
		if len(got) > limit || len(next) == 0 {
			break
		}
		start = next
	}
	var page broker.ListPage
	if len(got) > limit {
		got = got[:limit]
		page.Cursor = encodeCursor(path, got[limit-1])
	}
	page.Sandboxes = make([]broker.Sandbox, len(got))
	for i, it := range got {
		page.Sandboxes[i] = s.decodeSandbox(it)
	}
	return page, nil
}

// listFilter returns the filter expression for the conditions the path's
// key does not cover.
func listFilter(f broker.ListFilter, path listPath) (string, item) {
	var conds []string
	vals := item{}
	if path == pathScan {
		conds = append(conds, "begins_with(#PK, :sbx) AND #SK = :meta")
		vals[":sbx"], vals[":meta"] = avS(sbxPrefix), avS(sbxSK)
	}
	if f.Status != "" && path != pathStatus {
		conds = append(conds, "#status = :fstatus")
		vals[":fstatus"] = avS(string(f.Status))
	}
	if f.Owner != "" && path != pathOwner {
		conds = append(conds, "#allocated_to_track = :fowner")
		vals[":fowner"] = avS(f.Owner)
	}
	if f.NamePrefix != "" {
		conds = append(conds, "begins_with(#name, :fprefix)")
		vals[":fprefix"] = avS(f.NamePrefix)
	}
	if f.TrackName != "" {
		conds = append(conds, "#track_name = :ftrack")
		vals[":ftrack"] = avS(f.TrackName)
	}
	return strings.Join(conds, " AND "), vals
}

// listPage reads one DynamoDB page on path.
func (s *Store) listPage(ctx context.Context, path listPath, f broker.ListFilter, filter string, vals item, start item, limit int32) ([]item, item, error) {
	if path == pathScan {
		in := &dynamodb.ScanInput{
			TableName:                 s.table,
			FilterExpression:          optStr(filter),
			ExpressionAttributeValues: vals,
			ExclusiveStartKey:         start,
			Limit:                     aws.Int32(limit),
		}
		in.ExpressionAttributeNames = names(in.FilterExpression)
		out, err := s.db.Scan(ctx, in)
		if err != nil {
			return nil, nil, dbErr(err)
		}
		return out.Items, out.LastEvaluatedKey, nil
	}
	in := &dynamodb.QueryInput{
		TableName:         s.table,
		FilterExpression:  optStr(filter),
		ExclusiveStartKey: start,
		Limit:             aws.Int32(limit),
	}
	v := item{}
	for k, x := range vals {
		v[k] = x
	}
	if path == pathOwner {
		in.IndexName = aws.String(s.cfg.TrackIndex)
		in.KeyConditionExpression = aws.String("#allocated_to_track = :key")
		v[":key"] = avS(f.Owner)
	} else {
		in.IndexName = aws.String(s.cfg.StatusIndex)
		in.KeyConditionExpression = aws.String("#status = :key")
		v[":key"] = avS(string(f.Status))
	}
	in.ExpressionAttributeValues = v
	in.ExpressionAttributeNames = names(in.KeyConditionExpression, in.FilterExpression)
	out, err := s.db.Query(ctx, in)
	if err != nil {
		return nil, nil, dbErr(err)
	}
	return out.Items, out.LastEvaluatedKey, nil
}

// cursor is the decoded form of a List cursor: the access path and the key
// of the last sandbox returned, from which the next page continues.
type cursor struct {
	V int                  `json:"v"`
	P listPath             `json:"p"`
	K map[string][2]string `json:"k"` // attribute -> {"S"|"N", value}
}

const cursorVersion = 1

func encodeCursor(path listPath, last item) string {
	c := cursor{V: cursorVersion, P: path, K: map[string][2]string{}}
	for _, a := range keyAttrs(path) {
		switch v := last[a].(type) {
		case *types.AttributeValueMemberS:
			c.K[a] = [2]string{"S", v.Value}
		case *types.AttributeValueMemberN:
			c.K[a] = [2]string{"N", v.Value}
		}
	}
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor returns the ExclusiveStartKey of a cursor, nil for none.
// A cursor is accepted only for the filter whose pages it came from.
func decodeCursor(s string, path listPath, f broker.ListFilter) (item, error) {
	if s == "" {
		return nil, nil
	}
	bad := broker.Errorf(broker.EINVALID, "cursor is not valid; pass the cursor of the previous page unchanged")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, bad
	}
	var c cursor
	if err := json.Unmarshal(raw, &c); err != nil || c.V != cursorVersion || c.P != path {
		return nil, bad
	}
	attrs := keyAttrs(path)
	if len(c.K) != len(attrs) {
		return nil, bad
	}
	key := item{}
	for _, a := range attrs {
		v, ok := c.K[a]
		if !ok || v[1] == "" {
			return nil, bad
		}
		switch v[0] {
		case "S":
			key[a] = avS(v[1])
		case "N":
			if _, err := strconv.ParseFloat(v[1], 64); err != nil {
				return nil, bad
			}
			key[a] = &types.AttributeValueMemberN{Value: v[1]}
		default:
			return nil, bad
		}
	}
	if !strings.HasPrefix(getS(key, aPK), sbxPrefix) || getS(key, aSK) != sbxSK {
		return nil, bad
	}
	if _, ok := key[aAllocatedAt].(*types.AttributeValueMemberN); path != pathScan && !ok {
		return nil, bad
	}
	switch path {
	case pathOwner:
		if getS(key, aOwner) != f.Owner {
			return nil, bad
		}
	case pathStatus:
		if getS(key, aStatus) != string(f.Status) {
			return nil, bad
		}
	}
	return key, nil
}
